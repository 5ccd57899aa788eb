"""One writer per stage folder: a lock object in the artifact store.

A stage that computes holds ``<workspace>/.locks/<stage>-<key>.lock`` (JSON: owner, host,
pid, command, acquired and heartbeat times, a random token) from before it touches its
folder until its manifest is written. The lock is created with an exclusive create
(``open(..., "xb")``: ``O_EXCL`` on local and NFS paths, a conditional put on object stores
that support it), so two runs cannot both create it. While held, a thread refreshes the
heartbeat every ``heartbeat_s`` seconds.

A lock is *stale*, and the next run takes it over, when its holder is a process of this
host that no longer exists (a killed run: taken over at once), or when its heartbeat is older
than ``stale_after_s`` (a holder on another host that died). Otherwise the second run stops
with one line naming the holder (:class:`StageLockedError`). The holder checks that it still
owns the lock before it commits its result (:meth:`StageLock.ensure_held`), so a writer that
lost its lock (suspended past the stale timeout) never commits over the new one.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from pipeline.errors import TwostepError
from pipeline.store import ArtifactStore

log = logging.getLogger(__name__)

LOCKS_DIR = ".locks"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0
"""A lock whose heartbeat is older than this (12 missed beats) belongs to a dead holder."""


class StageLockedError(TwostepError):
    """Another live run holds the stage's lock."""


class LockLostError(TwostepError):
    """The lock was taken over while this run held it (it was suspended past the timeout)."""


@dataclass(frozen=True)
class LockRecord:
    """What a lock file holds."""

    owner: str
    host: str
    pid: int
    command: str
    acquired_at: float
    heartbeat_at: float
    token: str

    def describe(self, now: float) -> str:
        since = datetime.fromtimestamp(self.acquired_at, timezone.utc)
        return (f"{self.owner}@{self.host} pid {self.pid} ({self.command!r}, since "
                f"{since.isoformat(timespec='seconds')}, heartbeat {now - self.heartbeat_at:.0f}"
                f" s ago)")


def lock_path(stage: str, key: str) -> str:
    """The store-relative path of a stage folder's lock."""
    return f"{LOCKS_DIR}/{stage}-{key}.lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _read(store: ArtifactStore, path: str) -> LockRecord | None:
    """The lock's record; None when absent. A lock being written (empty or partial) reads as
    fresh and of unknown holder."""
    try:
        raw = store.read_bytes(path)
    except FileNotFoundError:
        return None
    try:
        return LockRecord(**json.loads(raw))
    except (ValueError, TypeError):
        mtime = _mtime(store, path)
        return LockRecord(owner="?", host="?", pid=-1, command="(lock being written)",
                          acquired_at=mtime, heartbeat_at=mtime, token="")


def _mtime(store: ArtifactStore, path: str) -> float:
    try:
        modified = store.fs.modified(store.path(path))
        return modified.timestamp()
    except (OSError, NotImplementedError, AttributeError):
        return time.time()


def stale_reason(record: LockRecord, now: float, stale_after_s: float) -> str | None:
    """Why ``record``'s holder is gone, or None while it may be alive."""
    if record.host == socket.gethostname() and record.pid > 0 \
            and not _process_alive(record.pid):
        return f"process {record.pid} on this host is gone"
    if now - record.heartbeat_at > stale_after_s:
        return f"no heartbeat for {now - record.heartbeat_at:.0f} s"
    return None


def check_unlocked(store: ArtifactStore, stage: str, key: str,
                   stale_after_s: float = STALE_AFTER_S) -> None:
    """Pre-flight: :class:`StageLockedError` if a live run holds ``<stage>/<key>`` now (the
    lock itself is taken when the stage starts computing)."""
    path = lock_path(stage, key)
    held = _read(store, path) if store.exists(path) else None
    now = time.time()
    if held is not None and stale_reason(held, now, stale_after_s) is None:
        raise StageLockedError(_held_message(store, path, stage, held, now, stale_after_s))


def _held_message(store: ArtifactStore, path: str, stage: str, held: LockRecord, now: float,
                  stale_after_s: float) -> str:
    return (f"{store.uri(path)}: stage {stage} is being computed by {held.describe(now)}; "
            f"wait for it to finish (a dead holder's lock is taken over after "
            f"{stale_after_s:.0f} s without heartbeat)")


class StageLock:
    """The lock of one stage folder (see the module docstring); use :func:`stage_lock`."""

    def __init__(self, store: ArtifactStore, stage: str, key: str, *,
                 heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S) -> None:
        self.store, self.stage, self.path = store, stage, lock_path(stage, key)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        now = time.time()
        self.record = LockRecord(owner=_user(), host=socket.gethostname(), pid=os.getpid(),
                                 command=" ".join(os.path.basename(a) if i == 0 else a
                                                  for i, a in enumerate(sys.argv))[:200],
                                 acquired_at=now, heartbeat_at=now, token=uuid.uuid4().hex)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    def acquire(self) -> None:
        """Create the lock, taking over a stale one; :class:`StageLockedError` if it is held."""
        self.store.makedirs(LOCKS_DIR)
        for _ in range(3):
            if self._create():
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name=f"lock-{self.stage}")
                self._thread.start()
                return
            held = _read(self.store, self.path)
            if held is None:
                continue  # released meanwhile: try again
            now = time.time()
            reason = stale_reason(held, now, self.stale_after_s)
            if reason is None:
                raise StageLockedError(_held_message(self.store, self.path, self.stage, held,
                                                     now, self.stale_after_s))
            log.warning("%s: taking over the lock of %s: %s", self.stage,
                        held.describe(now), reason)
            self._remove_if(held.token)
        raise StageLockedError(f"{self.store.uri(self.path)}: could not take the lock of "
                               f"stage {self.stage} (other runs keep taking it); try again")

    def _create(self) -> bool:
        try:
            with self.store.fs.open(self.store.path(self.path), "xb") as handle:
                handle.write(json.dumps(asdict(self.record)).encode())
        except FileExistsError:
            return False
        return True

    def _remove_if(self, token: str) -> None:
        """Remove the lock if it still holds ``token`` (a takeover never removes the fresh
        lock another run has just created)."""
        current = _read(self.store, self.path)
        if current is not None and current.token == token:
            with contextlib.suppress(FileNotFoundError):
                self.store.fs.rm(self.store.path(self.path))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = _read(self.store, self.path)
            if current is None or current.token != self.record.token:
                holder = current.describe(time.time()) if current else "nobody"
                self.lost = f"the lock is now held by {holder}"
                log.error("%s: lost the stage lock: %s", self.stage, self.lost)
                return
            try:
                beat = {**asdict(self.record), "heartbeat_at": time.time()}
                self.store.write_bytes(json.dumps(beat).encode(), self.path)
            except OSError as exc:  # a full disk, say: the run goes on, the lock may go stale
                log.warning("%s: could not refresh the stage lock: %s", self.stage, exc)

    def held(self) -> bool:
        """Whether this run still owns the lock (read from the lock file now)."""
        current = _read(self.store, self.path)
        if self.lost is None and (current is None or current.token != self.record.token):
            self.lost = ("the lock is now held by "
                         f"{current.describe(time.time()) if current else 'nobody'}")
        return self.lost is None

    def ensure_held(self) -> None:
        """Raise :class:`LockLostError` unless this run still owns the lock (before a
        commit)."""
        if not self.held():
            raise LockLostError(f"{self.store.uri(self.path)}: stage {self.stage} did not "
                                f"commit its result: {self.lost}; rerun")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is None:
            self._remove_if(self.record.token)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


@contextlib.contextmanager
def stage_lock(store: ArtifactStore, stage: str, key: str, **timing: float) -> Iterator[StageLock]:
    """Hold the lock of ``<stage>/<key>`` for the block (see :class:`StageLock`)."""
    lock = StageLock(store, stage, key, **timing)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
