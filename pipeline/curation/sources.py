"""Read prompt sources into rows, counting malformed rows instead of failing on them.

Every reader returns a :class:`pyarrow.Table` with the columns of :data:`ROW_SCHEMA`:
``status`` is ``""`` for a usable row and the name of a curation rule (``malformed_utf8``,
``malformed_record``, ``missing_field``) for a row that is counted and skipped. A problem
with a whole file (missing, unreadable, a CSV without the configured column) raises
:class:`~pipeline.errors.SourceError` naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import SourceError
from pipeline.hashing import canonical_json, sha256_text, stream_sha256
from pipeline.store import is_local_fs
from schemas.config import FileSource, PromptSource, ToySource

ROW_SCHEMA = pa.schema(
    [
        ("source_index", pa.int32()),
        ("source_row", pa.int64()),
        ("text", pa.string()),
        ("status", pa.string()),
    ]
)
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz"}  # codecs of the standard library
_FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
            ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class ResolvedSource:
    """One concrete input: a single file (globs expanded) or the toy generator."""

    index: int
    name: str
    uri: str
    format: str
    field: str
    config_path: str
    toy: ToySource | None = None


def infer_format(uri: str) -> str | None:
    suffixes = [s.lower() for s in PurePosixPath(uri).suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    return _FORMATS.get(suffixes[-1]) if suffixes else None


def resolve_sources(sources: list[PromptSource]) -> list[ResolvedSource]:
    """Expand globs, infer formats and check that every file exists, before any work starts."""
    resolved: list[ResolvedSource] = []
    for i, source in enumerate(sources):
        where = f"curate.sources[{i}]"
        if isinstance(source, ToySource):
            resolved.append(
                ResolvedSource(len(resolved), source.name or "toy", f"toy://seed={source.seed}",
                               "toy", "", where, toy=source)
            )
            continue
        for uri in _expand(source, where):
            fmt = source.format if source.format != "auto" else infer_format(uri)
            if fmt is None:
                raise SourceError(
                    f"{where}: cannot infer the format of {uri} from its extension; set "
                    f"format to one of txt, jsonl, json, csv, parquet"
                )
            if fmt == "txt" and "field" in source.model_fields_set:
                raise SourceError(
                    f"{where}.field: {uri} is a txt file, one prompt a line, with no fields; "
                    f"remove field (it is for jsonl, json, csv and parquet sources)")
            name = source.name or PurePosixPath(uri).name
            resolved.append(ResolvedSource(len(resolved), name, uri, fmt, source.field, where))
    return resolved


def _expand(source: FileSource, where: str) -> list[str]:
    try:
        fs, path = fsspec.core.url_to_fs(source.path)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"{where}.path: cannot open {source.path!r}: {exc}") from None
    if any(ch in path for ch in "*?["):
        matches = sorted(fs.glob(path))
        if not matches:
            raise SourceError(f"{where}.path: no file matches {source.path}"
                              f"{_relative_to_cwd(source.path)}")
    else:
        if not fs.exists(path):
            raise SourceError(f"{where}.path: source file not found: {source.path}"
                              f"{_relative_to_cwd(source.path)}")
        if fs.isdir(path):
            raise SourceError(f"{where}.path: {source.path} is a directory; use a glob such "
                              f"as {source.path.rstrip('/')}/*.txt")
        matches = [path]
    if is_local_fs(fs):
        return matches
    return [fs.unstrip_protocol(m) for m in matches]


def _relative_to_cwd(path: str) -> str:
    """For a relative local path: where it was looked for (relative paths in a config file
    are read from the current directory, not from the config file's folder)."""
    if "://" in path or os.path.isabs(path):
        return ""
    return f" (relative to the current directory, {os.getcwd()})"


# What an HTTP server says about a file's version, as fsspec's HTTP info() reads it.
_HTTP_VALIDATORS = ("ETag", "Content-MD5", "Digest", "Last-Modified")


def fingerprint_sources(sources: list[ResolvedSource]) -> dict[str, str]:
    """URI -> a key that changes with the file: fsspec's ``ukey`` (local: size, mtime, inode;
    object stores: ETag and the like). HTTP(S) is the exception: fsspec's ukey there is the URL
    alone ("assume static"), so the key is the response's size and validators (ETag,
    Last-Modified, ...), or the content's sha256 where the server sends none."""
    out = {}
    for src in sources:
        if src.toy is not None:
            continue
        fs, path = fsspec.core.url_to_fs(src.uri)
        if "http" in fs.protocol or "https" in fs.protocol:
            info = fs.info(path)
            validators = {k: info[k] for k in _HTTP_VALIDATORS if info.get(k)}
            if validators:
                out[src.uri] = sha256_text(canonical_json({"size": info.get("size"),
                                                           **validators}))
            else:
                with fs.open(path, "rb") as handle:
                    out[src.uri] = stream_sha256(handle)
        else:
            out[src.uri] = fs.ukey(path)
    return out


SAMPLE_BYTES = 1 << 20
"""How much of a text source (after decompression) the pre-flight check reads."""
_LINE_FORMATS = ("txt", "jsonl", "csv")
_UTF8_BOM = b"\xef\xbb\xbf"


def check_source(src: ResolvedSource) -> None:
    """Cheap pre-flight check of one file source, before any work (see docs/curation.md,
    "Whole-file checks"): a text source must be non-blank UTF-8 text with lines shorter than
    :data:`SAMPLE_BYTES` (judged on its first :data:`SAMPLE_BYTES`); a CSV or Parquet source
    must have the configured column, a JSONL source a record with it among the sampled ones,
    and a Parquet source at least one row."""
    if src.toy is not None:
        return
    try:
        with fsspec.open(src.uri, "rb", compression="infer") as f:
            if src.format == "parquet":
                meta = pq.ParquetFile(f)
                _parquet_column(meta.schema_arrow.names, src)
                if meta.metadata.num_rows == 0:
                    raise SourceError(f"{src.config_path}.path: {src.uri} has no rows; give a "
                                      f"file with prompts or remove this source")
                return
            head = f.read(SAMPLE_BYTES + 1)
    except pa.ArrowException as exc:
        raise SourceError(f"{src.config_path}.path: {src.uri} is not a Parquet file: "
                          f"{_first_line(exc)}") from None
    except (OSError, EOFError) as exc:  # also a corrupt .gz/.bz2/.xz
        raise SourceError(f"{src.config_path}.path: cannot read {src.uri}: "
                          f"{_first_line(exc)}") from None
    whole = len(head) <= SAMPLE_BYTES
    _check_text_sample(head[:SAMPLE_BYTES], whole, src)
    if src.format == "jsonl":
        sample = head if whole else head[:SAMPLE_BYTES].rpartition(b"\n")[0]  # whole lines
        scope = "" if whole else f"in the first {_size(SAMPLE_BYTES)} "
        error = _missing_field(src, _jsonl_records(_lines(sample)), scope)
        if error:
            raise error
    if src.format == "csv":
        line = head.removeprefix(_UTF8_BOM).split(b"\n", 1)[0]
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        _csv_column([h.strip() for h in next(csv.reader([text]), [])], src)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_text_sample(head: bytes, whole: bool, src: ResolvedSource) -> None:
    """Refuse a text source that is not text: ``head`` is its first bytes (all of it when
    ``whole``). The rules, so that a few malformed rows in a good file are still only counted
    and dropped (``malformed_utf8``):

    - a UTF-16/UTF-32 byte-order mark, or any NUL byte: not UTF-8 text (binary or UTF-16);
    - nothing but whitespace (the whole file): empty;
    - a line-based format (txt, jsonl, csv) with no newline in the sample: line 1 is longer
      than the sample (one huge line is not a prompt file; it is refused before being read);
    - more than half of the sample's non-blank lines not valid UTF-8: another encoding
      (latin-1, cp1252, ...)."""
    where = f"{src.config_path}.path: {src.uri}"
    size = _size(len(head))
    scope = "it" if whole else f"its first {size}"
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise SourceError(f"{where} is UTF-32 text; save it as UTF-8 (e.g. iconv -f UTF-32 "
                          f"-t UTF-8)")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SourceError(f"{where} is UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 "
                          f"-t UTF-8)")
    body = head.removeprefix(_UTF8_BOM)
    if whole and not body.strip():
        what = "empty (0 bytes)" if not head else "empty (blank lines only)"
        raise SourceError(f"{where} is {what}; give a file with prompts or remove this source")
    if b"\x00" in body:
        raise SourceError(f"{where} is binary, not UTF-8 text (NUL bytes in {scope}); give a "
                          f"{src.format} file of UTF-8 text (UTF-16 text: convert it with "
                          f"iconv -f UTF-16 -t UTF-8)")
    if src.format in _LINE_FORMATS and not whole and b"\n" not in body:
        raise SourceError(f"{where}: line 1 is longer than {size} (no newline in its first "
                          f"{size}): not a {src.format} file of one prompt a line; split it "
                          f"into lines")
    lines = body.split(b"\n")
    if not whole:
        lines = lines[:-1]  # the sample may end inside a line (and inside a character)
    nonblank = [line for line in lines if line.strip()]
    bad = sum(1 for line in nonblank if not _is_utf8(line))
    if bad * 2 > len(nonblank):
        first = next(i for i, line in enumerate(lines, 1) if line.strip() and not _is_utf8(line))
        raise SourceError(
            f"{where} is not UTF-8 text ({bad} of {len(nonblank)} non-blank lines in {scope} "
            f"are not valid UTF-8, the first at line {first}: latin-1 or cp1252?); convert it "
            f"to UTF-8 (e.g. iconv -f latin1 -t UTF-8)")


def _size(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _csv_column(header: list[str], src: ResolvedSource) -> int:
    """Index of the prompt column in a parsed CSV header (names already stripped)."""
    if src.field not in header:
        raise SourceError(
            f"{src.config_path}: {src.uri} has no column {src.field!r} "
            f"(columns: {', '.join(header)}); set field to the prompt column"
        )
    return header.index(src.field)


def _parquet_column(names: list[str], src: ResolvedSource) -> None:
    if src.field not in names:
        raise SourceError(
            f"{src.config_path}: {src.uri} has no column {src.field!r} "
            f"(columns: {', '.join(names)}); set field to the prompt column"
        )


def read_source(src: ResolvedSource) -> pa.Table:
    """All rows of one source (see module docstring)."""
    if src.toy is not None:
        from pipeline.toy.prompts import generate_prompts

        texts = [p.text for p in generate_prompts(src.toy.num_prompts, src.toy.seed)]
        return _table(src.index, texts, [""] * len(texts))
    try:
        with fsspec.open(src.uri, "rb", compression="infer") as f:
            data = f.read()
    except FileNotFoundError:
        raise SourceError(f"{src.config_path}: source file not found: {src.uri}") from None
    except OSError as exc:
        raise SourceError(f"{src.config_path}: cannot read {src.uri}: {exc}") from None
    reader = {"txt": _read_txt, "jsonl": _read_jsonl, "json": _read_json,
              "csv": _read_csv, "parquet": _read_parquet}[src.format]
    texts, statuses = reader(data, src)
    # a usable prompt means a record holds the field: no need to parse the file again
    if src.format in ("jsonl", "json") and "missing_field" in statuses and not any(
            t and not s for t, s in zip(texts, statuses, strict=True)):
        records = (_jsonl_records(_lines(data)) if src.format == "jsonl"
                   else _json_records(data, src))
        error = _missing_field(src, records, "")
        if error:
            raise error
    return _table(src.index, texts, statuses)


def _missing_field(src: ResolvedSource, records: Iterable[object],
                   scope: str) -> SourceError | None:
    """The error for a JSON/JSONL source none of whose ``records`` (the parsed ones; ``scope``
    says which part of the file) holds a prompt under ``field``, naming the keys they have;
    None when a record holds it, is a bare string (a prompt too), or none is an object."""
    keys: dict[str, None] = {}
    for record in records:
        if isinstance(record, str) or (isinstance(record, dict)
                                       and record.get(src.field) is not None):
            return None
        if isinstance(record, dict):
            keys.update(dict.fromkeys(map(str, record)))
    if not keys:
        return None
    if src.field in keys:
        return SourceError(f"{src.config_path}.field: every record {scope}of {src.uri} that has "
                           f"the field {src.field!r} holds null there: no prompt to read; fill "
                           f"it in, or set field to the key that holds the prompt")
    shown = ", ".join(list(keys)[:12]) + (", ..." if len(keys) > 12 else "")
    return SourceError(f"{src.config_path}.field: no record {scope}of {src.uri} has the field "
                       f"{src.field!r} (its records have: {shown}); set field to the key that "
                       f"holds the prompt")


def _jsonl_records(lines: Iterable[bytes]) -> Iterator[object]:
    """The values of the lines that parse as JSON (blank and broken lines skipped)."""
    for line in lines:
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bad UTF-8
            continue


def _table(index: int, texts: list[str | None], statuses: list[str]) -> pa.Table:
    n = len(texts)
    return pa.table(
        {
            "source_index": pa.array([index] * n, pa.int32()),
            "source_row": pa.array(range(n), pa.int64()),
            "text": pa.array(texts, pa.string()),
            "status": pa.array(statuses, pa.string()),
        },
        schema=ROW_SCHEMA,
    )


def _lines(data: bytes) -> list[bytes]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the file is not an extra (blank) row
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _read_txt(data: bytes, src: ResolvedSource) -> tuple[list[str | None], list[str]]:
    texts: list[str | None] = []
    statuses: list[str] = []
    for line in _lines(data):
        try:
            texts.append(line.decode("utf-8"))
            statuses.append("")
        except UnicodeDecodeError:
            texts.append(None)
            statuses.append("malformed_utf8")
    return texts, statuses


def _field_value(record: object, field: str) -> tuple[str | None, str]:
    if isinstance(record, str):
        return record, ""
    if not isinstance(record, dict):
        return None, "malformed_record"
    value = record.get(field)
    if value is None:
        return None, "missing_field"
    if not isinstance(value, str):
        return None, "malformed_record"
    return value, ""


def _read_jsonl(data: bytes, src: ResolvedSource) -> tuple[list[str | None], list[str]]:
    texts: list[str | None] = []
    statuses: list[str] = []
    for line in _lines(data):
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            texts.append(None)
            statuses.append("malformed_utf8")
            continue
        if not decoded.strip():
            texts.append("")
            statuses.append("")  # a blank line is charged to the 'empty' rule
            continue
        try:
            record = json.loads(decoded)
        except json.JSONDecodeError:
            texts.append(None)
            statuses.append("malformed_record")
            continue
        text, status = _field_value(record, src.field)
        texts.append(text)
        statuses.append(status)
    return texts, statuses


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _json_records(data: bytes, src: ResolvedSource) -> list[object]:
    """The records of a ``.json`` source: its top-level list, or the list under ``field``."""
    try:
        doc = json.loads(data.decode("utf-8-sig", errors="surrogateescape"))
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"{src.config_path}: {src.uri} is not valid JSON (line {exc.lineno}, column "
            f"{exc.colno}: {exc.msg}); use .jsonl for a file with one record a line"
        ) from None
    if isinstance(doc, dict) and isinstance(doc.get(src.field), list):
        doc = doc[src.field]
    if not isinstance(doc, list):
        raise SourceError(
            f"{src.config_path}: {src.uri} must hold a JSON list of records or strings (or an "
            f"object with a list under {src.field!r}), got {type(doc).__name__}"
        )
    return doc


def _read_json(data: bytes, src: ResolvedSource) -> tuple[list[str | None], list[str]]:
    texts: list[str | None] = []
    statuses: list[str] = []
    for record in _json_records(data, src):
        text, status = _field_value(record, src.field)
        if text is not None and _has_surrogates(text):
            text, status = None, "malformed_utf8"
        texts.append(text)
        statuses.append(status)
    return texts, statuses


def _read_csv(data: bytes, src: ResolvedSource) -> tuple[list[str | None], list[str]]:
    text = data.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return [], []
    except csv.Error as exc:
        raise SourceError(f"{src.config_path}: {src.uri}: unreadable CSV header: {exc}") from None
    header = [h.strip() for h in header]
    column = _csv_column(header, src)
    texts: list[str | None] = []
    statuses: list[str] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error:
            texts.append(None)
            statuses.append("malformed_record")
            continue
        if not row:
            texts.append("")
            statuses.append("")
        elif len(row) != len(header):
            texts.append(None)
            statuses.append("malformed_record")
        elif _has_surrogates(row[column]) or any(_has_surrogates(v) for v in row):
            texts.append(None)
            statuses.append("malformed_utf8")
        else:
            texts.append(row[column])
            statuses.append("")
    return texts, statuses


def _read_parquet(data: bytes, src: ResolvedSource) -> tuple[list[str | None], list[str]]:
    try:
        pfile = pq.ParquetFile(io.BytesIO(data))
    except pa.ArrowException as exc:
        raise SourceError(f"{src.config_path}: {src.uri} is not a Parquet file: {exc}") from None
    _parquet_column(pfile.schema_arrow.names, src)
    column = pfile.read(columns=[src.field]).column(0)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise SourceError(
            f"{src.config_path}: {src.uri} column {src.field!r} has type {column.type}, "
            f"expected strings"
        )
    texts = column.to_pylist()
    statuses = ["missing_field" if t is None else "" for t in texts]
    return texts, statuses
