from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.curation.sources import (
    SAMPLE_BYTES,
    check_source,
    infer_format,
    read_source,
    resolve_sources,
)
from pipeline.errors import SourceError
from schemas.config import FileSource, ToySource


def _rows(path, **kw):
    (src,) = resolve_sources([FileSource(path=str(path), **kw)])
    t = read_source(src)
    return list(zip(t.column("text").to_pylist(), t.column("status").to_pylist(), strict=True))


def test_formats_are_inferred_through_compression():
    assert infer_format("x/prompts.jsonl.gz") == "jsonl"
    assert infer_format("s3://b/p.parquet") == "parquet"
    assert infer_format("notes.md") is None


def test_txt_keeps_line_numbers_and_counts_bad_utf8(tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes(b"\xef\xbb\xbfone\r\n\xff\ntwo")
    assert _rows(p) == [("one", ""), (None, "malformed_utf8"), ("two", "")]


def test_json_document_and_parquet(tmp_path):
    j = tmp_path / "p.json"
    j.write_text('{"prompt": ["a", {"prompt": "b"}, 3]}')
    assert _rows(j) == [("a", ""), ("b", ""), (None, "malformed_record")]
    q = tmp_path / "p.parquet"
    pq.write_table(pa.table({"caption": ["x", None]}), q)
    assert _rows(q, field="caption") == [("x", ""), (None, "missing_field")]


def test_file_level_errors_name_the_file(tmp_path):
    with pytest.raises(SourceError, match=r"sources\[0\].path: no file matches"):
        resolve_sources([FileSource(path=str(tmp_path / "*.txt"))])
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(SourceError, match=r"cannot infer the format of .*notes.md"):
        resolve_sources([FileSource(path=str(tmp_path / "notes.md"))])
    with pytest.raises(SourceError, match=r"is a directory"):
        resolve_sources([FileSource(path=str(tmp_path))])
    (tmp_path / "p.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match=r"p.parquet is not a Parquet file"):
        read_source(resolve_sources([FileSource(path=str(tmp_path / "p.parquet"))])[0])
    (tmp_path / "p.txt").write_text("a red circle\n")
    with pytest.raises(SourceError, match=r"sources\[0\].field: .*p.txt is a txt file, one "
                                          r"prompt a line, with no fields; remove field"):
        resolve_sources([FileSource(path=str(tmp_path / "p.txt"), field="text")])


def test_a_missing_relative_path_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=r"source file not found: prompts.txt \(relative to "
                                          r"the current directory, .+\)$"):
        resolve_sources([FileSource(path="prompts.txt")])
    with pytest.raises(SourceError, match=r"not found: /no/prompts.txt$"):
        resolve_sources([FileSource(path="/no/prompts.txt")])


def test_a_jsonl_field_that_no_record_has_is_refused_before_reading(tmp_path):
    """The pre-flight names the keys the records do have; one record with the field (or a
    bare string) passes, and a file larger than the sample is judged on the sample."""
    def check(name, data, **kw):
        (tmp_path / name).write_bytes(data)
        check_source(resolve_sources([FileSource(path=str(tmp_path / name), **kw)])[0])

    records = b'{"caption": "a red circle", "id": 1}\n{"caption": "a blue square"}\n'
    with pytest.raises(SourceError, match=r"sources\[0\].field: no record of .*a.jsonl has the "
                                          r"field 'prompt' \(its records have: caption, id\); "
                                          r"set field"):
        check("a.jsonl", records)
    check("a.jsonl", records, field="caption")
    check("b.jsonl", records + b'not json\n{"prompt": "a star"}\n')
    check("c.jsonl", records + b'"a bare string is a prompt"\n')
    big = records * (SAMPLE_BYTES // len(records) + 10) + b'{"prompt": "too late"}\n'
    with pytest.raises(SourceError, match=r"no record in the first 1 MiB of .*d.jsonl"):
        check("d.jsonl", big)
    # the record with the prompt ends exactly at the sample's last byte: it is judged whole
    head = b'{"id": 0}\n' * ((SAMPLE_BYTES - 22) // 10)
    edge = head + b'{"prompt": "a star"}\n'.rjust(SAMPLE_BYTES - len(head), b" ")
    assert len(edge) == SAMPLE_BYTES
    check("f.jsonl", edge + b"x")
    with pytest.raises(SourceError, match=r"every record of .*g.jsonl that has the field "
                                          r"'prompt' holds null there"):
        check("g.jsonl", b'{"prompt": null, "id": 1}\n{"id": 2}\n')
    (tmp_path / "e.json").write_text('[{"caption": "x"}, {"caption": "y"}]')
    with pytest.raises(SourceError, match=r"no record of .*e.json has the field 'prompt' "
                                          r"\(its records have: caption\)"):
        _rows(tmp_path / "e.json")  # a .json document is judged when it is read


def test_toy_source_is_deterministic():
    (src,) = resolve_sources([ToySource(num_prompts=50, seed=3)])
    assert read_source(src).equals(read_source(src))
    assert read_source(src).num_rows == 50


def _check(path, **kw):
    (src,) = resolve_sources([FileSource(path=str(path), **kw)])
    check_source(src)


def test_the_text_check_passes_good_files_with_a_few_bad_rows(tmp_path, messy_sources):
    for path in messy_sources.values():
        _check(path)  # one malformed row among good ones: counted later, not refused
    big = tmp_path / "big.txt"  # many normal lines, well past the sample
    big.write_bytes(b"a red circle on the left\n" * (2 * SAMPLE_BYTES // 25))
    _check(big)
    gz = tmp_path / "big.txt.gz"
    gz.write_bytes(gzip.compress(big.read_bytes()))
    _check(gz)
    half = tmp_path / "half.txt"  # half the lines bad: still counted, not refused
    half.write_bytes(b"good one\ncaf\xe9\n")
    _check(half)
    minified = tmp_path / "one.json"  # a .json document may be one long line
    minified.write_text("[" + ",".join(['"a red circle"'] * (SAMPLE_BYTES // 10)) + "]")
    _check(minified)


@pytest.mark.parametrize(("name", "data", "message"), [
    ("empty.txt", b"", r"empty \(0 bytes\)"),
    ("blank.jsonl", b"\n \n\t\n", r"empty \(blank lines only\)"),
    ("utf16.csv", "prompt\na\n".encode("utf-16"), "is UTF-16 text"),
    ("nul.txt", b"a red\x00circle\n", "is binary"),
    ("latin1.txt", b"ok\ncaf\xe9\nna\xefve\n", r"not UTF-8 text \(2 of 3 .* line 2"),
    ("long.jsonl", b"x" * (SAMPLE_BYTES + 10), "line 1 is longer than 1 MiB"),
])
def test_the_text_check_refuses_files_that_are_not_prompt_text(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SourceError, match=rf"curate.sources\[0\].path: .*{name}.*{message}"):
        _check(path)


@pytest.mark.parametrize("validators", [True, False])
def test_a_changed_prompt_file_over_http_gets_another_key(tmp_path, validators):
    """fsspec's HTTP ukey is the URL alone: a prompt file edited on its server was a cache hit.
    The key now follows the server's Last-Modified/ETag, else the content."""
    import functools
    import http.server
    import os
    import threading

    from pipeline.curation.sources import fingerprint_sources

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def send_header(self, keyword, value):
            if validators or keyword != "Last-Modified":
                super().send_header(keyword, value)

    (tmp_path / "prompts.txt").write_text("a blue circle\n")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/prompts.txt"

        def key() -> str:
            return fingerprint_sources(resolve_sources([FileSource(path=url)]))[url]

        before = key()
        assert key() == before  # stable while the file is
        (tmp_path / "prompts.txt").write_text("a blue square\n")  # the same size
        os.utime(tmp_path / "prompts.txt", (1e9, 1e9))
        assert key() != before
    finally:
        server.shutdown()
