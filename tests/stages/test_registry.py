"""The pre-flight of a run (stages/registry.py): what it refuses before any stage starts."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from stages.registry import STAGES, prepare_run


def test_an_object_store_workspace_is_refused_before_curation_when_training_follows():
    # curate and sample_teacher write through fsspec; training, evaluation and export need
    # local files: the run must stop before curation, not after hours of sampling
    with pytest.raises(ConfigError, match=r"workspace 'memory://twostep-preflight': training, "
                                          r".*use a local or mounted \(NFS\) workspace, not "
                                          r"memory://") as err:
        prepare_run("smoke", [], "memory://twostep-preflight", None)
    assert "\n" not in str(err.value)
    # the stages that can write to an object store still run there
    prepare_run("smoke", [], "memory://twostep-preflight", ["curate"])


def test_the_stages_on_local_files_are_the_training_evaluation_and_export_stages():
    assert [name for name, spec in STAGES.items() if spec.local_files] == [
        "train_init", "train_e2e", "evaluate", "export"]
