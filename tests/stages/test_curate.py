"""The curate stage on messy inputs: exact counts per rule, caching, keys, errors."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.curation.promptset import read_prompts
from pipeline.errors import SourceError
from pipeline.stage import run_stage
from pipeline.store import ArtifactStore
from stages.curate import DROPPED_FILENAME, STAGE

pytestmark = pytest.mark.usefixtures("ray_local")


def _overrides(sources: dict, **extra: object) -> list[str]:
    items = [
        f"curate.sources=[{{path: '{sources['txt']}'}}, {{path: '{sources['csv']}'}}, "
        f"{{path: '{sources['jsonl']}'}}]",
        "curate.blocklist=['cheap pills']",
        "curate.eval_fraction=0.5",
    ]
    items += [f"{k}={v}" for k, v in extra.items()]
    return items


def test_messy_sources_give_exact_explained_counts(messy_sources, tmp_path):
    cfg = load_config("smoke", _overrides(messy_sources), workspace=str(tmp_path / "ws"))
    store = ArtifactStore(cfg.workspace)
    outcome = run_stage(STAGE, cfg, store)
    m = outcome.manifest
    assert not outcome.cached
    assert m.counts["rows_read"] == 23
    assert m.counts["kept"] == 6
    expected = {"exact_duplicate": 3, "near_duplicate": 2, "empty": 3, "too_long_chars": 1,
                "malformed_utf8": 1, "blocklist": 1, "too_short_chars": 1,
                "malformed_record": 3, "missing_field": 2}
    assert {k: v for k, v in m.dropped.items() if v} == expected
    assert m.counts["rows_read"] == m.counts["kept"] + sum(m.dropped.values())
    assert m.counts["train"] + m.counts["eval"] == 6
    by_source = {s.name: s for s in m.sources}
    assert by_source["prompts.txt"].rows_read == 12 and by_source["prompts.txt"].kept == 3
    assert by_source["prompts.csv"].dropped == {"malformed_record": 1, "exact_duplicate": 1}
    assert by_source["prompts.jsonl"].kept == 1

    prompts = sorted(
        read_prompts(store, m, "train").column("prompt").to_pylist()
        + read_prompts(store, m, "eval").column("prompt").to_pylist()
    )
    assert prompts == sorted([
        "a red circle on the left",
        "tab and control chars here",
        "Caf\u00e9 on the corner",
        "a blue square, on the right, large",
        'a yellow shape "quoted" in the middle',
        "a magenta circle in the top left corner",
    ])
    dropped = pq.read_table(store.path(outcome.stage_dir, DROPPED_FILENAME)).to_pylist()
    near = [d for d in dropped if d["rule"] == "near_duplicate"]
    assert {d["text"] for d in near} == {"A red circle on the left.",
                                         "A MAGENTA circle in the top-left corner!"}
    assert all(d["duplicate_of"] for d in near)


def test_second_run_is_a_cache_hit_and_a_changed_setting_a_new_key(messy_sources, tmp_path):
    ws = str(tmp_path / "ws")
    cfg = load_config("smoke", _overrides(messy_sources), workspace=ws)
    store = ArtifactStore(ws)
    first = run_stage(STAGE, cfg, store)
    mtimes = {f.path: (tmp_path / "ws" / first.stage_dir / f.path).stat().st_mtime_ns
              for f in first.manifest.files}
    second = run_stage(STAGE, cfg, store)
    assert second.cached and second.manifest.key == first.manifest.key
    assert mtimes == {f.path: (tmp_path / "ws" / first.stage_dir / f.path).stat().st_mtime_ns
                      for f in first.manifest.files}

    changed = load_config("smoke", _overrides(messy_sources, **{"curate.min_chars": 10}),
                          workspace=ws)
    third = run_stage(STAGE, changed, store)
    assert not third.cached and third.manifest.key != first.manifest.key
    # "tab and ..." (26 chars) survives; "ab" was already out; nothing else is that short.
    assert third.manifest.counts["kept"] == 6

    forced = run_stage(STAGE, cfg, store, force=True)
    assert not forced.cached and forced.manifest.key == first.manifest.key
    assert [f.sha256 for f in forced.manifest.files] == [f.sha256 for f in first.manifest.files]


def test_output_is_deterministic_and_ids_are_stable(messy_sources, tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = load_config("smoke", _overrides(messy_sources), workspace=str(tmp_path / name))
        runs.append(run_stage(STAGE, cfg, ArtifactStore(cfg.workspace)).manifest)
    assert [f.sha256 for f in runs[0].files] == [f.sha256 for f in runs[1].files]


def test_cap_per_source_and_toy_source(tmp_path):
    cfg = load_config("smoke", ["curate.max_per_source=50"], workspace=str(tmp_path / "ws"))
    m = run_stage(STAGE, cfg, ArtifactStore(cfg.workspace)).manifest
    assert m.counts["kept"] == 50
    assert m.dropped["source_cap"] > 0
    assert m.counts["rows_read"] == 400 == m.counts["kept"] + sum(m.dropped.values())


def test_missing_source_is_a_clear_error_before_work(tmp_path):
    cfg = load_config("smoke", [f"curate.sources=[{{path: '{tmp_path}/nope.txt'}}]"],
                      workspace=str(tmp_path / "ws"))
    with pytest.raises(SourceError, match=r"curate.sources\[0\].path: source file not found"):
        run_stage(STAGE, cfg, ArtifactStore(cfg.workspace))
    assert not (tmp_path / "ws" / "curate").exists()


def test_glob_source_and_csv_without_the_column(tmp_path):
    (tmp_path / "a.txt").write_text("a red circle\n")
    (tmp_path / "b.txt").write_text("a blue square\n")
    cfg = load_config("smoke", [f"curate.sources=[{{path: '{tmp_path}/*.txt'}}]",
                                "curate.eval_fraction=0"], workspace=str(tmp_path / "ws"))
    m = run_stage(STAGE, cfg, ArtifactStore(cfg.workspace)).manifest
    assert [s.name for s in m.sources] == ["a.txt", "b.txt"] and m.counts["kept"] == 2

    (tmp_path / "c.csv").write_text("id,text\n1,hello there\n")
    cfg = load_config("smoke", [f"curate.sources=[{{path: '{tmp_path}/c.csv'}}]"],
                      workspace=str(tmp_path / "ws"))
    with pytest.raises(SourceError, match=r"c.csv has no column 'prompt' \(columns: id, text\)"):
        run_stage(STAGE, cfg, ArtifactStore(cfg.workspace))


def test_file_error_raised_inside_ray_surfaces_as_itself(tmp_path):
    """A whole-file problem found while reading on Ray (not by the pre-flight) is re-raised
    as the user-facing error, not a Ray wrapper."""
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "a red circle"}, {"prompt": ')
    cfg = load_config("smoke", [f"curate.sources=[{{path: '{bad}'}}]"],
                      workspace=str(tmp_path / "ws"))
    with pytest.raises(SourceError, match=r"bad.json is not valid JSON \(line 1"):
        run_stage(STAGE, cfg, ArtifactStore(cfg.workspace))


def test_key_depends_only_on_the_curate_section():
    from pipeline.stage import compute_key

    base = compute_key(STAGE, load_config("smoke"), {})
    other_sections = load_config("smoke", ["ray.num_cpus=1", "tracking.experiment=x",
                                           "workspace=/elsewhere"])
    assert compute_key(STAGE, other_sections, {}) == base
    assert compute_key(STAGE, load_config("smoke", ["curate.split_seed=3"]), {}) != base


def test_editing_a_source_file_changes_the_key(tmp_path):
    src = tmp_path / "p.txt"
    src.write_text("a red circle\n")
    cfg = load_config("smoke", [f"curate.sources=[{{path: '{src}'}}]",
                                "curate.eval_fraction=0"], workspace=str(tmp_path / "ws"))
    store = ArtifactStore(cfg.workspace)
    first = run_stage(STAGE, cfg, store)
    assert run_stage(STAGE, cfg, store).cached
    src.write_text("a red circle\na blue square\n")
    second = run_stage(STAGE, cfg, store)
    assert not second.cached and second.manifest.counts["kept"] == 2
    assert second.manifest.key != first.manifest.key
    assert list(second.manifest.external_inputs) == [str(src)]


def test_punctuation_only_prompts_are_not_near_duplicates(tmp_path):
    src = tmp_path / "p.txt"
    src.write_text("!!!\n???\n...\n!!!\n")
    cfg = load_config("smoke", [f"curate.sources=[{{path: '{src}'}}]",
                                "curate.eval_fraction=0"], workspace=str(tmp_path / "ws"))
    m = run_stage(STAGE, cfg, ArtifactStore(cfg.workspace)).manifest
    assert m.counts["kept"] == 3 and m.dropped["exact_duplicate"] == 1
    assert m.dropped["near_duplicate"] == 0


def test_a_json_field_that_no_record_has_is_an_error(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"caption": "a red circle"}\n{"caption": "a blue square"}\n')
    cfg = load_config("smoke", [f"curate.sources=[{{path: '{src}'}}]"],
                      workspace=str(tmp_path / "ws"))
    with pytest.raises(SourceError, match=r"sources\[0\].field: no record of .*p.jsonl has the "
                                          r"field 'prompt'"):
        run_stage(STAGE, cfg, ArtifactStore(cfg.workspace))


def test_a_prompt_set_without_train_prompts_is_refused_and_nothing_is_published(tmp_path):
    """Every row dropped (the rules that dropped them are named), or every kept prompt drawn
    for eval: nothing to train on, refused before anything is written."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 1}\n{"prompt": ["a list"]}\n')
    cfg = load_config("smoke", [f"curate.sources=[{{path: '{bad}'}}]"],
                      workspace=str(tmp_path / "ws"))
    store = ArtifactStore(cfg.workspace)
    with pytest.raises(SourceError, match=r"no train prompt: 0 of 2 rows kept \(dropped: "
                                          r"malformed_record 2\)"):
        run_stage(STAGE, cfg, store)
    three = tmp_path / "three.txt"
    three.write_text("a red circle\na blue square\na green star\n")
    cfg = load_config("smoke", [f"curate.sources=[{{path: '{three}'}}]",
                                "curate.eval_fraction=0.999"], workspace=str(tmp_path / "ws"))
    with pytest.raises(SourceError, match=r"no train prompt: all 3 kept prompts were drawn for "
                                          r"eval at curate.eval_fraction=0.999"):
        run_stage(STAGE, cfg, store)
    assert not list((tmp_path / "ws" / "curate").glob("*/"))  # not even an empty folder
    cfg = load_config("smoke", [f"curate.sources=[{{path: '{three}'}}]",
                                "curate.eval_fraction=0.01"], workspace=str(tmp_path / "ws"))
    assert run_stage(STAGE, cfg, store).manifest.counts == {  # no eval: evaluate's concern
        "rows_read": 3, "kept": 3, "dropped": 0, "train": 3, "eval": 0}
