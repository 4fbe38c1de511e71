"""Re-tokenising corpus shards after a vocabulary extension.

Curation tokenizes with the base tokenizer; when the run extends the vocabulary, the
shards are decoded document by document and encoded again with the extended tokenizer,
into a local cache that is reused when a restarted trainer finds it complete.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cpt_trainer.train.shards import MANIFEST_FILE, Manifest, TokenStream, read_manifest, split_documents, write_corpus

logger = logging.getLogger(__name__)

_BATCH_DOCS = 256


def retokenize_corpus(manifest: Manifest, base_tokenizer, new_tokenizer, out_folder: Path) -> Manifest:
    """The corpus re-encoded with `new_tokenizer` (cached in `out_folder`)."""
    marker = out_folder / "RETOKENIZED"
    if marker.is_file() and (out_folder / MANIFEST_FILE).is_file():
        return read_manifest(out_folder)
    splits: dict[str, list[list[int]]] = {}
    for split in manifest.splits:
        docs: list[list[int]] = []
        batch: list[list[int]] = []
        for doc in split_documents(TokenStream(manifest, split), manifest.eos_id):
            batch.append(doc.tolist())
            if len(batch) >= _BATCH_DOCS:
                docs.extend(_reencode(batch, base_tokenizer, new_tokenizer))
                batch = []
        docs.extend(_reencode(batch, base_tokenizer, new_tokenizer))
        splits[split] = docs
    info = {"name_or_path": "extended:" + str(manifest.tokenizer.get("name_or_path", "")), "vocab_size": len(new_tokenizer), "sha256": ""}
    write_corpus(out_folder, splits, len(new_tokenizer), new_tokenizer.eos_token_id, info)
    marker.write_text(json.dumps({"source": str(manifest.folder)}), encoding="utf-8")
    logger.info("re-tokenized %s into %s with the extended vocabulary", manifest.folder, out_folder)
    return read_manifest(out_folder)


def _reencode(batch: list[list[int]], base_tokenizer, new_tokenizer) -> list[list[int]]:
    if not batch:
        return []
    texts = base_tokenizer.batch_decode(batch, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return new_tokenizer(texts, add_special_tokens=False)["input_ids"]
