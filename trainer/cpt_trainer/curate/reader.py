"""Documents out of input files: jsonl, parquet and plain text, gzip/zstd-compressed or not.

Every record becomes a `Document` or a `Skip` (never a silent loss): invalid UTF-8, invalid
JSON, a missing or non-string text field, or a file that cannot be read (in full or from
some point on) is reported with its reason, and counted in the manifest.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cpt_trainer.contract.config import S3Settings
from cpt_trainer.curate.storage import InputFile, fetch_to_local, is_s3, open_input

# A document's key: the file's index in the corpus listing and the record's position in it.
RECORD_BITS = 40


def doc_key(file_index: int, record: int) -> int:
    return (file_index << RECORD_BITS) | record


def split_key(key: int) -> tuple[int, int]:
    return key >> RECORD_BITS, key & ((1 << RECORD_BITS) - 1)


@dataclass(frozen=True)
class Document:
    key: int
    text: str


@dataclass(frozen=True)
class Skip:
    """A record or file that was not read, and why (reason is a short stable code)."""

    uri: str
    record: int | None
    reason: str
    detail: str = ""

    def to_dict(self) -> dict:
        return {"uri": self.uri, "record": self.record, "reason": self.reason, "detail": self.detail[:200]}


_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """Sniff the magic bytes: gzip and zstd streams are decompressed, anything else passes."""
    head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
    if head.startswith(_GZIP_MAGIC):
        return io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), buffer_size=1 << 20)
    if head.startswith(_ZSTD_MAGIC):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)
    return raw


def _read_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, gzip.BadGzipFile]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is a trainer dependency
        pass
    return tuple(errors)


def _decode(data: bytes) -> tuple[str | None, str]:
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        return None, f"invalid byte at offset {exc.start}"


def _text_value(value, field: str) -> tuple[str | None, str, str]:
    """(text, reason, detail) for a record's field value."""
    if value is None:
        return None, "null_text", f"field {field!r} is null"
    if isinstance(value, bytes):
        text, detail = _decode(value)
        return (text, "", "") if text is not None else (None, "invalid_utf8", detail)
    if not isinstance(value, str):
        return None, "text_not_a_string", f"field {field!r} is a {type(value).__name__}"
    return value, "", ""


def _jsonl(file: InputFile, stream: BinaryIO, field: str) -> Iterator[Document | Skip]:
    for n, line in enumerate(stream):
        if not line.strip():
            continue
        text, detail = _decode(line)
        if text is None:
            yield Skip(file.uri, n, "invalid_utf8", detail)
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Skip(file.uri, n, "invalid_json", str(exc))
            continue
        if not isinstance(record, dict):
            yield Skip(file.uri, n, "not_an_object", f"a JSON {type(record).__name__}")
            continue
        if field not in record:
            yield Skip(file.uri, n, "missing_text_field", f"no field {field!r}")
            continue
        value, reason, detail = _text_value(record[field], field)
        if value is None:
            yield Skip(file.uri, n, reason, detail)
            continue
        yield Document(doc_key(file.index, n), value)


_PARAGRAPH = re.compile(rb"\n[ \t\r]*\n")


def _text(file: InputFile, stream: BinaryIO, unit: str) -> Iterator[Document | Skip]:
    if unit == "line":
        units: Iterator[bytes] = iter(stream)
    else:
        data = stream.read()
        units = iter([data] if unit == "file" else _PARAGRAPH.split(data))
    for n, chunk in enumerate(units):
        text, detail = _decode(chunk)
        if text is None:
            yield Skip(file.uri, n, "invalid_utf8", detail)
            continue
        if unit != "file" and not text.strip():
            continue
        yield Document(doc_key(file.index, n), text.rstrip("\n") if unit == "line" else text)


def _parquet(file: InputFile, local_path: str, field: str) -> Iterator[Document | Skip]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(local_path)
    names = pf.schema_arrow.names
    if field not in names:
        yield Skip(file.uri, None, "missing_text_field", f"no column {field!r} (columns: {', '.join(names[:20])})")
        return
    n = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[field]):
        for value in batch.column(0).to_pylist():
            text, reason, detail = _text_value(value, field)
            if text is None:
                yield Skip(file.uri, n, reason, detail)
            else:
                yield Document(doc_key(file.index, n), text)
            n += 1


def iter_documents(
    file: InputFile, fmt: str, field: str, unit: str, settings: S3Settings
) -> Iterator[Document | Skip]:
    """The file's documents in order; read failures end the file with a Skip naming the cause."""
    import pyarrow

    errors = _read_errors() + (pyarrow.ArrowException,)
    last = -1
    tmpdir = None
    try:
        if fmt == "parquet":
            local = file.uri
            if is_s3(file.uri):
                tmpdir = tempfile.TemporaryDirectory(prefix="cpt-parquet-")
                local = fetch_to_local(file.uri, settings, tmpdir.name)
            gen = _parquet(file, local, field)
            stream = None
        else:
            stream = _decompressed(open_input(file, settings))
            gen = _jsonl(file, stream, field) if fmt == "jsonl" else _text(file, stream, unit)
        try:
            for item in gen:
                if item.__class__ is Document:
                    last = item.key & ((1 << RECORD_BITS) - 1)
                yield item
        finally:
            if stream is not None:
                stream.close()
    except errors as exc:
        if last < 0:
            yield Skip(file.uri, None, "unreadable_file", f"{type(exc).__name__}: {exc}")
        else:
            yield Skip(file.uri, last + 1, "read_error", f"stopped after record {last}: {type(exc).__name__}: {exc}")
    except Exception as exc:  # botocore errors on S3 objects
        if type(exc).__module__.startswith(("botocore", "boto3")):
            yield Skip(file.uri, None, "unreadable_file", f"{type(exc).__name__}: {exc}")
        else:
            raise
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
