"""The bad-input corpus (``bad_inputs/``, one case a file; see its README.md) run through the
real ``distill run`` command: each is refused in the pre-flight checks with exit code 2 and one
``error:`` line naming the file and the field, no traceback, and nothing written to the
workspace. Cases too large or too binary to commit are built into ``tmp_path`` by a builder.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.reliability.conftest import distill, error_line, snapshot

BAD = Path(__file__).resolve().parent / "bad_inputs"
TOY_TEACHER = REPO_ROOT / "pipeline" / "toy" / "assets" / "teacher"
WEIGHTS = Path("transformer") / "diffusion_pytorch_model.safetensors"
PICKLED = Path("transformer") / "diffusion_pytorch_model.bin"
MARKER = "UNPICKLED"  # created by the pickle case's payload if anything ever unpickles it


@dataclass(frozen=True)
class Case:
    kind: str  # config: --config FILE; prompts: a curate source; teacher: teacher.path
    build: Callable[[Path], Path]  # tmp_path -> the bad input (a file or a folder)
    names: str  # what the error line must name: the file (or folder), as a path suffix
    field: str  # ... and the field (a config key, a line of the file, a tensor)
    extra: tuple[str, ...] = ()  # more --set overrides


def committed(name: str) -> Callable[[Path], Path]:
    return lambda tmp: BAD / name


def one_line_100mb(tmp: Path) -> Path:
    path = tmp / "prompts_one_line_100mb.txt"
    chunk = b"a red circle on the left " * 40_000  # 1 MB, no newline
    with path.open("wb") as handle:
        for _ in range(100):
            handle.write(chunk)
    return path


def teacher_copy(tmp: Path, name: str) -> Path:
    folder = tmp / name
    shutil.copytree(TOY_TEACHER, folder)
    return folder


def teacher_missing_config(tmp: Path) -> Path:
    folder = teacher_copy(tmp, "teacher_missing_config")
    (folder / "transformer" / "config.json").unlink()
    return folder


def teacher_wrong_shape(tmp: Path) -> Path:
    from safetensors.torch import load_file, save_file

    folder = teacher_copy(tmp, "teacher_wrong_shape")
    state = load_file(folder / WEIGHTS)
    state["cap_embedder.1.weight"] = state["cap_embedder.1.weight"][:, :256].contiguous()
    save_file(state, folder / WEIGHTS)
    return folder


class _Trap:
    """Unpickling this creates ``path``: the proof that a pickle was (or was not) loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def teacher_pickle_weights(tmp: Path) -> Path:
    import torch

    folder = teacher_copy(tmp, "teacher_pickle_weights")
    (folder / WEIGHTS).unlink()
    torch.save({"weight": _Trap(tmp / MARKER)}, folder / PICKLED)
    return folder


def teacher_truncated(tmp: Path) -> Path:
    folder = teacher_copy(tmp, "teacher_truncated_safetensors")
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) * 3 // 5])
    return folder


CASES: dict[str, Case] = {
    # configs: the YAML file itself
    "config_malformed": Case("config", committed("config_malformed.yaml"),
                             "config_malformed.yaml", "line 4, column 13"),
    "config_not_a_mapping": Case("config", committed("config_not_a_mapping.yaml"),
                                 "config_not_a_mapping.yaml", "top level"),
    "config_not_utf8": Case("config", committed("config_not_utf8.yaml"),
                            "config_not_utf8.yaml", "line 2"),
    "config_wrong_type": Case("config", committed("config_wrong_type.yaml"),
                              "config_wrong_type.yaml", "train_init.steps"),
    "config_unknown_key_top": Case("config", committed("config_unknown_key_top.yaml"),
                                   "config_unknown_key_top.yaml",
                                   "trainn_init: unknown field; did you mean 'train_init'?"),
    "config_unknown_key_section": Case("config", committed("config_unknown_key_section.yaml"),
                                       "config_unknown_key_section.yaml",
                                       "curate.min_wrds: unknown field (got 2); did you mean "
                                       "'min_words'?"),
    "config_unknown_key_nested": Case("config", committed("config_unknown_key_nested.yaml"),
                                      "config_unknown_key_nested.yaml",
                                      "train_e2e.discriminator.layerz: unknown field; did you "
                                      "mean 'layers'?"),
    "config_unknown_key_list_item": Case("config", committed("config_unknown_key_list_item.yaml"),
                                         "config_unknown_key_list_item.yaml",
                                         "curate.sources[0].sed: unknown field (got 3); did you "
                                         "mean 'seed'?"),
    # prompt files: curate.sources=[{path: FILE}]
    "prompts_empty": Case("prompts", committed("prompts_empty.txt"), "prompts_empty.txt",
                          "curate.sources[0].path"),
    "prompts_blank": Case("prompts", committed("prompts_blank.txt"), "prompts_blank.txt",
                          "curate.sources[0].path"),
    "prompts_binary": Case("prompts", committed("prompts_binary.txt"), "prompts_binary.txt",
                           "curate.sources[0].path"),
    "prompts_utf16": Case("prompts", committed("prompts_utf16.txt"), "prompts_utf16.txt",
                          "curate.sources[0].path"),
    "prompts_latin1": Case("prompts", committed("prompts_latin1.txt"), "prompts_latin1.txt",
                           "curate.sources[0].path"),
    "prompts_one_line_100mb": Case("prompts", one_line_100mb, "prompts_one_line_100mb.txt",
                                   "curate.sources[0].path"),
    "prompts_wrong_field": Case("prompts", committed("prompts_wrong_field.jsonl"),
                                "prompts_wrong_field.jsonl", "curate.sources[0].field"),
    # teacher folders: teacher.path=FOLDER
    "teacher_path_missing": Case("teacher", lambda tmp: tmp / "no_such_teacher",
                                 "no_such_teacher", "teacher.path"),
    "teacher_path_markup": Case("teacher", lambda tmp: tmp / "no_such_[/bold]teacher",
                                "no_such_[/bold]teacher", "teacher.path"),
    "teacher_missing_config": Case("teacher", teacher_missing_config,
                                   "teacher_missing_config/transformer/config.json",
                                   "teacher.path"),
    "teacher_wrong_shape": Case("teacher", teacher_wrong_shape,
                                f"teacher_wrong_shape/{WEIGHTS}", "cap_embedder.1.weight"),
    "teacher_pickle_weights": Case("teacher", teacher_pickle_weights,
                                   f"teacher_pickle_weights/{PICKLED}", "teacher.path"),
    "teacher_truncated_safetensors": Case("teacher", teacher_truncated,
                                          f"teacher_truncated_safetensors/{WEIGHTS}",
                                          "teacher.path"),
    "teacher_other_arch": Case("teacher", committed("teacher_other_arch"),
                               "teacher_other_arch/model_index.json", "teacher.path",
                               extra=("teacher.kind=zimage",)),
}


def _args(case: Case, bad: Path, workspace: Path) -> list[str]:
    head = ["run", "--workspace", str(workspace)]
    if case.kind == "config":
        return [*head, "--config", str(bad)]
    override = {"prompts": f"curate.sources=[{{path: '{bad}'}}]",
                "teacher": f"teacher.path='{bad}'"}[case.kind]
    sets = [override, *case.extra]
    return [*head, "--config", "smoke", *(a for s in sets for a in ("--set", s))]


@pytest.mark.parametrize("case_id", list(CASES))
def test_a_bad_input_is_one_line_naming_file_and_field(case_id, tmp_path):
    case = CASES[case_id]
    bad = case.build(tmp_path)
    workspace = tmp_path / "ws"
    before = snapshot(bad) if bad.is_dir() else None
    result = distill(*_args(case, bad, workspace), timeout=120)
    line = error_line(result, code=2)
    assert case.names in line, line
    assert case.field in line, line
    assert not workspace.exists(), sorted(p.name for p in workspace.rglob("*"))
    if before is not None:
        assert snapshot(bad) == before  # the input is not touched either
    if case_id == "teacher_pickle_weights":
        assert not (tmp_path / MARKER).exists(), "the pickle weight file was unpickled"


def test_the_pickle_trap_is_armed(tmp_path):
    """The marker check above proves something: unpickling the case's file creates it."""
    import torch

    folder = teacher_pickle_weights(tmp_path)
    torch.load(folder / PICKLED, weights_only=False)
    assert (tmp_path / MARKER).exists()


def test_every_committed_bad_input_is_a_case_and_described():
    readme = (BAD / "README.md").read_text(encoding="utf-8")
    used = {case.build(Path("/unused")).name for case in CASES.values()
            if case.build.__qualname__.startswith("committed")}
    on_disk = {p.name for p in BAD.iterdir() if p.name != "README.md"}
    assert on_disk == used
    for case_id in CASES:
        assert f"`{case_id}`" in readme, f"{case_id} is not described in bad_inputs/README.md"
