"""The `distill` flow through a real (temporary) Prefect server on a local Ray."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def fetch():
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return asyncio.run(fetch())


def test_distill_flow_runs_stages_through_prefect(prefect_server, tmp_path):
    from flows.distill import curate, distill
    from pipeline.store import ArtifactStore
    from schemas.manifest import PromptSetManifest

    ws = str(tmp_path / "ws")
    # Curation only: the whole smoke pipeline runs through deployments in test_serve.py.
    state = distill(config="smoke", workspace=ws, only=["curate"], return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["curate"]["cached"] is False
    manifest = ArtifactStore(ws).read_manifest(f"curate/{summary['curate']['key']}",
                                               PromptSetManifest, verify="sha256")
    assert manifest.counts["kept"] == manifest.counts["train"] + manifest.counts["eval"] > 0
    names = sorted(t.name for t in _task_runs(state.state_details.flow_run_id))
    assert names == ["curate"]

    rerun = curate(config="smoke", workspace=ws, return_state=True)
    assert rerun.is_completed() and rerun.result()["curate"]["cached"] is True


def test_failed_stage_fails_the_flow(prefect_server, tmp_path):
    from flows.distill import distill

    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    state = distill(config="smoke", workspace=str(tmp_path / "ws"),
                    overrides=[f"curate.sources=[{{path: '{bad}'}}]"], return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="bad.json is not valid JSON"):
        state.result()


def test_an_eval_split_evaluate_cannot_use_stops_the_run_after_curation(prefect_server,
                                                                          tmp_path):
    """A small corpus at a small eval_fraction draws no eval prompt: the run stops as soon as
    curation ends (evaluate's input check), not at evaluate after sampling and training."""
    from flows.distill import distill

    three = tmp_path / "three.txt"
    three.write_text("a red circle\na blue square\na green star\n")
    ws = tmp_path / "ws"
    state = distill(config="smoke", workspace=str(ws), overrides=[
        f"curate.sources=[{{path: '{three}'}}]", "curate.eval_fraction=0.01"],
        return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"evaluate: the curated eval split holds 0 prompt\(s\), "
                                        r"which give 0 eval sample\(s\) \(evaluate needs 2\)"):
        state.result()
    assert list(ws.glob("curate/*/manifest.json")) and not (ws / "sample_teacher").exists()


def test_ablate_flow_checks_every_variant_before_training_any(prefect_server, tmp_path):
    """Through the flow (the deployment's path) as through the CLI: a variant the run's
    config contradicts (gan_real_data without a discriminator) fails before the variants
    before it in the list train."""
    from flows.distill import ablate

    ws = tmp_path / "ws"
    state = ablate(config="smoke", workspace=str(ws), overrides=["train_e2e.adv_weight=0"],
                   seeds=2, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("ablation variant gan_real_data (train_e2e.gan_real=data)")
    assert not (ws / "train_init").exists() and not (ws / "curate").exists()


def test_every_stage_runs_on_a_zimage_teacher(prefect_server, tmp_path, zimage_folder):
    """The real-scale path at miniature size: a Z-Image diffusers folder as the teacher and a
    prompt file of the user's own, through every stage to an export that generates. Its
    evaluation has no toy feature network: PSNR/SSIM against the teacher, no toy FD."""
    import itertools

    import torch

    from flows.distill import distill
    from pipeline.export.folder import load_exported
    from pipeline.store import ArtifactStore
    from schemas.manifest import EvalReportManifest

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(
        f"a {size} {color} {shape} on the {where}\n" for size, color, shape, where in
        itertools.product(["big", "small"], ["red", "blue", "green"], ["circle", "square"],
                          ["left", "right", "top", "bottom"])))  # 48 prompts
    ws = tmp_path / "ws"
    state = distill(config="smoke", workspace=str(ws), return_state=True, overrides=[
        f"curate.sources=[{{path: '{prompts}'}}]", "curate.eval_fraction=0.1",
        "teacher.kind=zimage", f"teacher.path={zimage_folder}", "teacher.height=32",
        "teacher.width=32", "sample_teacher.batch_size=16", "train_init.steps=2",
        "train_e2e.steps=2", "train_init.batch_size=4", "train_e2e.batch_size=4",
        "train_e2e.discriminator.layers=[0,1]"])
    assert state.is_completed(), state
    summary = state.result()
    assert list(summary) == ["curate", "sample_teacher", "train_init", "train_e2e",
                             "evaluate", "export"]
    report = ArtifactStore(str(ws)).read_manifest(
        f"evaluate/{summary['evaluate']['key']}", EvalReportManifest)
    student = {g.name: g for g in report.generators}["student"]
    assert {"psnr", "ssim"} <= set(student.metrics) and "fd_teacher" not in student.metrics
    text = (ws / "evaluate" / summary["evaluate"]["key"] / "report.md").read_text()
    assert "psnr/ssim" in text and "Frechet" not in text
    pipe = load_exported(ws / "export" / summary["export"]["key"] / "pipeline")
    image = pipe("a red circle on the left", num_inference_steps=2, output_type="pt",
                 generator=torch.Generator().manual_seed(1)).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
