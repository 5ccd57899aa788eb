"""The compose file and images are consistent (no Docker engine runs here: this checks what
`docker compose config` would, plus the project's own rules)."""

from __future__ import annotations

from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_compose_services_share_the_artifact_volume_and_bind_localhost():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"prefect", "mlflow", "ray-head", "ray-worker", "runner"}
    assert "artifacts" in compose["volumes"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    for name in ("mlflow", "ray-head", "ray-worker", "runner"):
        assert "artifacts:/artifacts" in services[name]["volumes"], name
        assert services[name]["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    assert services["runner"]["command"][0] == "serve"
    assert services["runner"]["depends_on"]["prefect"]["condition"] == "service_healthy"
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (DOCKER / dockerfile).read_text()
        assert text.index("torch==2.13.0") < text.index("pip install -c")  # torch first
        for folder in ("schemas", "pipeline", "stages", "flows", "configs"):
            assert f"COPY {folder} {folder}" in text
