"""Per-machine measured answers: kept whole, read back, and never a failure when broken."""

from pipeline.machine_cache import cache_path, recall, remember


def test_remember_then_recall_and_other_keys_survive(tmp_path):
    path = tmp_path / "c.json"
    remember("x", "a", {"v": 1}, path)
    remember("x", "b", {"v": 2}, path)
    assert recall("x", "a", path) == {"v": 1} and recall("x", "b", path) == {"v": 2}
    assert recall("x", "missing", path) is None
    assert not list(tmp_path.glob("*.tmp"))


def test_a_corrupt_or_unwritable_cache_means_measuring_again(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    assert recall("x", "a", path) is None
    blocked = tmp_path / "file"
    blocked.write_text("")
    remember("x", "a", {"v": 1}, blocked / "sub" / "c.json")  # parent is a file: ignored
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_path("sampling") == tmp_path / "twostep" / "sampling.json"
