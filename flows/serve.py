"""Deployments: ``distill/full`` (every stage), one per stage (``<stage>/<stage>``) and
``distill-ablate/ablate``, served by one Prefect runner (``distill serve``).

Entrypoints are module paths (``flows.distill:distill``), so Ray workers on other machines can
import the flows. Parameters are ``config`` (a preset name or a YAML path), ``overrides`` (a
list of ``key=value``), ``workspace`` (and ``force`` / ``only`` where they apply); they are
validated by the same pydantic config before any stage starts (a bad value fails the run with
one line).
"""

from __future__ import annotations

from flows.env import apply_defaults

apply_defaults()

from prefect.deployments.runner import EntrypointType, RunnerDeployment  # noqa: E402

from flows.distill import STAGE_FLOWS, ablate, distill  # noqa: E402


def deployments(config: str = "toy") -> list[RunnerDeployment]:
    """Every twostep deployment, with ``config`` as the default preset."""
    module = EntrypointType.MODULE_PATH
    out = [distill.to_deployment(name="full", entrypoint_type=module,
                                 parameters={"config": config},
                                 description="Every stage, in order (cached stages are reused).")]
    out += [flow.to_deployment(name=stage, entrypoint_type=module, parameters={"config": config},
                               description=f"Rerun {stage} alone (its upstream must be cached).")
            for stage, flow in STAGE_FLOWS.items()]
    out.append(ablate.to_deployment(name="ablate", entrypoint_type=module,
                                    parameters={"config": config},
                                    description="The paper's claims on the toy world."))
    return out


def serve_all(config: str = "toy", limit: int | None = None) -> None:
    """Register the deployments with the Prefect API (``PREFECT_API_URL``) and run them as
    they are triggered, until interrupted."""
    from prefect import serve

    serve(*deployments(config), limit=limit, pause_on_shutdown=False)
