"""Reachability of the servers a run talks to, checked before any stage starts (the clients
themselves retry for minutes before giving up)."""

from __future__ import annotations

import socket

from pipeline.errors import ConfigError


def check_reachable(setting: str, value: str, host: str, port: int,
                    timeout_s: float = 5.0) -> None:
    """Raise a one-line :class:`ConfigError` naming ``setting`` (its ``value``) when nothing
    accepts a TCP connection at ``host:port`` within ``timeout_s``."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"{setting} {value!r}: cannot reach {host}:{port} ({exc})") from None
