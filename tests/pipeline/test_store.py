"""Artifact store: atomic writes, checksums, manifest validation."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pipeline.errors import ArtifactError
from pipeline.store import ArtifactStore
from schemas.manifest import Manifest


def _manifest(store: ArtifactStore, stage_dir: str) -> Manifest:
    return Manifest(stage="x", key="k", created_at=datetime.now(timezone.utc), code_version="t",
                    config={}, files=store.file_entries(stage_dir))


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(RuntimeError):
        with store.open_atomic("s", "a.bin") as handle:
            handle.write(b"partial")
            raise RuntimeError("killed")
    assert list((tmp_path / "s").iterdir()) == []
    store.write_bytes(b"whole", "s", "a.bin")
    assert (tmp_path / "s" / "a.bin").read_bytes() == b"whole"


def test_manifest_roundtrip_and_verification(tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.write_bytes(b"hello", "s", "a.bin")
    store.write_bytes(b"world!", "s", "sub", "b.bin")
    m = _manifest(store, "s")
    assert [(f.path, f.size) for f in m.files] == [("a.bin", 5), ("sub/b.bin", 6)]
    store.write_manifest("s", m)
    assert store.read_manifest("s", Manifest, verify="sha256") == m

    (tmp_path / "s" / "a.bin").write_bytes(b"HELLO")  # same size, other content
    store.read_manifest("s", Manifest, verify="size")
    with pytest.raises(ArtifactError, match=r"a.bin: sha256 does not match"):
        store.read_manifest("s", Manifest, verify="sha256")
    (tmp_path / "s" / "sub" / "b.bin").write_bytes(b"wor")
    with pytest.raises(ArtifactError, match=r"b.bin: size 3 bytes, manifest says 6"):
        store.read_manifest("s", Manifest)
    (tmp_path / "s" / "sub" / "b.bin").unlink()
    with pytest.raises(ArtifactError, match=r"b.bin: listed in the manifest but missing"):
        store.read_manifest("s", Manifest)


def test_invalid_or_missing_manifest(tmp_path):
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(ArtifactError, match=r"no manifest \(the stage has not finished\)"):
        store.read_manifest("s", Manifest)
    store.write_bytes(b'{"stage": "x", "surprise": 1}', "s", "manifest.json")
    with pytest.raises(ArtifactError, match=r"not a valid Manifest"):
        store.read_manifest("s", Manifest)


def test_temporaries_are_not_listed(tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.write_bytes(b"x", "s", "done.bin")
    (tmp_path / "s" / "part.bin.tmp-123-abcd").write_bytes(b"partial")
    assert [f.path for f in store.file_entries("s")] == ["done.bin"]


def test_fsspec_memory_filesystem():
    store = ArtifactStore("memory://twostep-test-store")
    store.write_bytes(b"abc", "s", "a.bin")
    store.write_manifest("s", _manifest(store, "s"))
    assert store.read_manifest("s", Manifest, verify="sha256").files[0].size == 3
    assert store.uri("s").startswith("memory://")


def test_a_relative_local_workspace_travels_as_an_absolute_path(tmp_path, monkeypatch):
    # Ray actors and Ray Train workers run in their own working directory (a Ray session
    # folder), so the root they get must not depend on the caller's.
    monkeypatch.chdir(tmp_path)
    store = ArtifactStore("runs/toy")
    assert store.root_uri == str(tmp_path / "runs" / "toy") == store.root
    assert ArtifactStore("memory://bucket/run").root_uri == "memory://bucket/run"
