"""Process helpers for the integration tests that start servers and kill runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_session(proc: subprocess.Popen, first: int | None = None, grace: float = 60) -> None:
    """Optionally send ``first`` to the process and give it ``grace`` seconds, then SIGKILL
    every process left in its session (local Ray instances and workers live in their own
    process groups) until none is left."""
    if first is not None and proc.poll() is None:
        proc.send_signal(first)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
        pids = [int(p) for p in found.stdout.split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    if proc.poll() is None:
        proc.wait(30)
