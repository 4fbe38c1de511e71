"""Text that ships with every machine (no hub downloads): general English and a legal domain.

- general: Python's bundled documentation topics (`pydoc_data.topics`, ~465 KB of prose);
- legal: the licence texts in /usr/share/common-licenses and the package `copyright`
  files under /usr/share/doc (heavily near-duplicated: good for exercising dedup).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

COMMON_LICENSES = Path("/usr/share/common-licenses")
PACKAGE_DOCS = Path("/usr/share/doc")


def general_documents(min_chars: int = 200) -> list[str]:
    """Python's documentation topics, split into paragraphs-sized documents."""
    from pydoc_data.topics import topics

    docs: list[str] = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            block = block.strip()
            if len(block) >= min_chars:
                docs.append(block)
    return docs


def legal_documents(min_chars: int = 200, limit: int | None = None) -> list[str]:
    """Licence texts split into sections, then package copyright files, whole."""
    docs: list[str] = []
    for path in sorted(p for p in COMMON_LICENSES.iterdir() if p.is_file()):
        text = path.read_text(encoding="utf-8", errors="replace")
        for block in re.split(r"\n\s*\n", text):
            block = block.strip()
            if len(block) >= min_chars:
                docs.append(block)
    for text in iter_copyright_files():
        if len(text) >= min_chars:
            docs.append(text)
        if limit is not None and len(docs) >= limit:
            break
    return docs[:limit] if limit is not None else docs


def iter_copyright_files() -> Iterator[str]:
    """Each /usr/share/doc/*/copyright file as one document, in a stable order."""
    for path in sorted(PACKAGE_DOCS.glob("*/copyright")):
        try:
            yield path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
