"""Ray bootstrap: attach to a cluster (``RAY_ADDRESS`` or ``ray.address``) or start a local
instance, and always shut down what we started."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from pipeline.errors import ConfigError
from pipeline.net import check_reachable
from schemas.config import RayConfig

log = logging.getLogger(__name__)


def resolve_address(cfg: RayConfig) -> str | None:
    """``RAY_ADDRESS`` wins over the config, so one config runs locally and on a cluster."""
    return os.environ.get("RAY_ADDRESS") or cfg.address


def check_ray_address(cfg: RayConfig, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the setting, when a configured ``host:port`` cannot be reached
    (Ray itself retries for minutes before giving up)."""
    address = resolve_address(cfg)
    if not address or address in ("auto", "local"):
        return
    where = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "ray.address"
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{where} {address!r}: expected host:port, ray://host:port or auto")
    check_reachable(where, address, host, int(port), timeout_s)


@contextlib.contextmanager
def ray_session(cfg: RayConfig) -> Iterator[None]:
    """Make sure Ray is initialized inside the block.

    Re-entrant: when Ray is already initialized (an outer flow, a test fixture) the block uses
    it and leaves it running. Otherwise it starts a local instance, or connects to the cluster,
    and shuts it down on exit, also on error.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = resolve_address(cfg)
    # Token auth (Ray >= 2.5x default) makes the local dashboard API answer 401; a local
    # single-user instance bound to 127.0.0.1 does not need it.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict[str, object] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        log.info("attaching to Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(
            num_cpus=cfg.num_cpus,
            include_dashboard=cfg.include_dashboard,
            dashboard_host="127.0.0.1",
            _temp_dir=cfg.temp_dir,
            **kwargs,
        )
    try:
        yield
    finally:
        ray.shutdown()

