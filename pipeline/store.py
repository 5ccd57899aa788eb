"""Artifact store on fsspec: atomic writes, sha256 of every file, manifest read/write.

Paths given to the store are relative to its root and '/'-separated. On a local or POSIX
filesystem a write goes to a temporary sibling and is renamed into place, so readers never see
a partial file; on object stores (s3://) each object is written whole by a single PUT.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol, TypeVar

import fsspec
from pydantic import ValidationError

from pipeline.errors import ArtifactError, ConfigError
from pipeline.hashing import stream_sha256
from schemas.manifest import MANIFEST_FILENAME, FileEntry, Manifest

TMP_MARKER = ".tmp-"
M = TypeVar("M", bound=Manifest)


def is_local_fs(fs) -> bool:
    """Whether an fsspec filesystem is the local one (paths are plain OS paths)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"file", "local"} & set(protocols))


def unwritable_folder(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a folder this command writes into, or None: it is a
    file, or its nearest existing ancestor is not a writable folder. Checked before any work,
    so that a mistake is not found after minutes of sampling or training; by creating (and
    removing) a folder there, since permission bits do not tell (root, /proc, read-only
    mounts)."""
    import tempfile

    if path.exists() and not path.is_dir():
        return "exists and is not a folder"
    where = path if path.exists() else next(
        (p for p in path.absolute().parents if p.exists()), None)
    if where is None or not where.is_dir():
        return f"cannot be created ({where} is not a folder)"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".twostep-probe-", dir=where))
    except OSError as exc:
        problem = exc.strerror or type(exc).__name__
        return (f"is not writable ({problem})" if where == path
                else f"cannot be created in {where} ({problem})")
    return None


def replace_dir(fs, source: str, target: str) -> None:
    """Move the finished folder ``source`` to ``target`` on ``fs``, replacing it whole: the
    old folder is moved aside first and removed only once the new one is in place, so a crash
    never leaves ``target`` half old, half new."""
    old = f"{target}.old"
    if fs.exists(old):
        fs.rm(old, recursive=True)
    if fs.exists(target):
        fs.mv(target, old, recursive=True)
    fs.mv(source, target, recursive=True)
    if fs.exists(old):
        fs.rm(old, recursive=True)


def replace_local_dir(source: Path, target: Path) -> None:
    """:func:`replace_dir` for local folders."""
    replace_dir(fsspec.filesystem("file"), str(source), str(target))


class ContentEntry(Protocol):
    """A file a manifest lists: :class:`FileEntry`, or a shard record with the same fields."""

    path: str
    size: int
    sha256: str


def verify_content(where: str, data: bytes, entry: ContentEntry, way_out: str = "") -> None:
    """Bytes read whole against their manifest entry: size, then sha256; ``way_out`` ends
    the message (what the user can do about it)."""
    suffix = f"; {way_out}" if way_out else ""
    if len(data) != entry.size:
        raise ArtifactError(f"{where}: size {len(data)} bytes, manifest says {entry.size} "
                            f"(truncated or replaced){suffix}")
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ArtifactError(f"{where}: sha256 does not match the manifest (corrupt or "
                            f"replaced){suffix}")


class ArtifactStore:
    """Files under one root (a local path or an fsspec URL)."""

    def __init__(self, root: str) -> None:
        try:
            self.fs, root_path = fsspec.core.url_to_fs(root)
        except (ValueError, ImportError) as exc:
            raise ConfigError(f"workspace {root!r}: {exc}") from None
        self.root = root_path.rstrip("/") or "/"
        # Local roots travel as absolute paths: Ray actors and Ray Train workers resolve a
        # relative one against their own working directory (a Ray session folder).
        self.root_uri = self.root if self.is_local else root

    @property
    def is_local(self) -> bool:
        return is_local_fs(self.fs)

    def path(self, *parts: str) -> str:
        """Absolute filesystem path of a relative artifact path."""
        return posixpath.join(self.root, *parts)

    def local_path(self, *parts: str) -> Path:
        """The OS path of a relative artifact path, for work that needs local file IO
        (training checkpoints, MLflow's SQLite store): the workspace must be a local path, or
        a mounted shared filesystem (NFS) on a cluster."""
        if not self.is_local:
            protocol = self.fs.protocol if isinstance(self.fs.protocol, str) \
                else self.fs.protocol[0]
            raise ConfigError(f"workspace {self.root_uri!r}: training, evaluation, export and "
                              f"MLflow's default store use local files; use a local or "
                              f"mounted (NFS) workspace, not {protocol}:// (only curate and "
                              f"sample_teacher can write there: --only)")
        return Path(self.path(*parts))

    def uri(self, *parts: str) -> str:
        full = self.path(*parts)
        return full if self.is_local else self.fs.unstrip_protocol(full)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def makedirs(self, *parts: str) -> None:
        self.fs.makedirs(self.path(*parts), exist_ok=True)

    def remove_tree(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.rm(self.path(*parts), recursive=True)

    def is_empty_tree(self, *parts: str) -> bool:
        """No file under the folder (empty sub-folders aside)."""
        return not self.fs.find(self.path(*parts))

    def replace_tree(self, source: str, target: str) -> None:
        """Move the folder ``source`` to ``target``, replacing it whole (:func:`replace_dir`)."""
        replace_dir(self.fs, self.path(source), self.path(target))

    @contextlib.contextmanager
    def open_atomic(self, *parts: str) -> Iterator[IO[bytes]]:
        """Open for binary writing; the file appears under its name only if the block ends
        without an exception."""
        final = self.path(*parts)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        tmp = f"{final}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open(tmp, "wb") as handle:
                yield handle
            self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp)
            raise

    def write_bytes(self, data: bytes, *parts: str) -> None:
        with self.open_atomic(*parts) as handle:
            handle.write(data)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open(self.path(*parts), "rb") as handle:
            return handle.read()

    def sha256(self, *parts: str) -> str:
        with self.fs.open(self.path(*parts), "rb") as handle:
            return stream_sha256(handle)

    def file_entry(self, stage_dir: str, rel: str) -> FileEntry:
        """Size and sha256 of one file (read once)."""
        return FileEntry(path=rel, size=self.fs.size(self.path(stage_dir, rel)),
                         sha256=self.sha256(stage_dir, rel))

    def file_entries(self, stage_dir: str,
                     known: Mapping[str, FileEntry] | None = None) -> list[FileEntry]:
        """Every finished file under ``stage_dir`` (not the manifest, not temporaries).
        ``known`` entries (hashed by the stage as it wrote them) are reused when their size
        still matches, so no file is hashed twice."""
        base = self.path(stage_dir)
        entries = []
        for full in sorted(self.fs.find(base)):
            rel = posixpath.relpath(full, base)
            if rel == MANIFEST_FILENAME or TMP_MARKER in posixpath.basename(rel):
                continue
            entry = (known or {}).get(rel)
            if entry is None or entry.size != self.fs.size(full):
                entry = self.file_entry(stage_dir, rel)
            entries.append(entry)
        return entries

    def write_manifest(self, stage_dir: str, manifest: Manifest) -> None:
        """Write ``manifest.json`` last and atomically: its presence marks a finished stage."""
        self.write_bytes(manifest.model_dump_json(indent=2).encode(), stage_dir, MANIFEST_FILENAME)

    def read_manifest(self, stage_dir: str, model: type[M], verify: str = "size") -> M:
        """Read and validate a manifest, then check its files.

        ``verify``: ``"none"``, ``"size"`` (each listed file exists with its size; cheap) or
        ``"sha256"`` (full content check). Raises :class:`ArtifactError` naming the problem.
        """
        where = self.uri(stage_dir, MANIFEST_FILENAME)
        try:
            raw = self.read_bytes(stage_dir, MANIFEST_FILENAME)
        except FileNotFoundError:
            raise ArtifactError(f"{where}: no manifest (the stage has not finished)") from None
        try:
            manifest = model.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise ArtifactError(
                f"{where}: not a valid {model.__name__}: {loc}: {first['msg']}"
            ) from None
        if verify != "none":
            self.verify_files(stage_dir, manifest.files, full=verify == "sha256")
        return manifest

    def verify_files(self, stage_dir: str, files: Sequence[ContentEntry], full: bool,
                     way_out: str = "") -> None:
        """Each file exists with its manifest size (and, ``full``, its sha256); the one check
        every consumer of a stage folder uses. ``way_out`` ends the message."""
        suffix = f"; {way_out}" if way_out else ""
        for entry in files:
            where = self.uri(stage_dir, entry.path)
            full_path = self.path(stage_dir, entry.path)
            if not self.fs.exists(full_path):
                raise ArtifactError(f"{where}: listed in the manifest but missing{suffix}")
            size = self.fs.size(full_path)
            if size != entry.size:
                raise ArtifactError(f"{where}: size {size} bytes, manifest says {entry.size} "
                                    f"(truncated or replaced){suffix}")
            if full and self.sha256(stage_dir, entry.path) != entry.sha256:  # streamed
                raise ArtifactError(f"{where}: sha256 does not match the manifest (corrupt or "
                                    f"replaced){suffix}")

    def free_bytes(self, *parts: str) -> int | None:
        """Free space where ``parts`` lives (local filesystems; None elsewhere)."""
        if not self.is_local:
            return None
        path = Path(self.path(*parts))
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            return shutil.disk_usage(path).free
        except OSError:
            return None


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded",
                   "database or disk is full")  # the last: SQLite (MLflow's store)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: Ray task and Ray Train errors carry the worker's
    exception as ``cause`` or only in their text) is a full disk or an exceeded quota."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        text = str(current)
        if any(sign in text for sign in DISK_FULL_TEXTS):
            return True
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return False


@contextlib.contextmanager
def disk_full_is_one_line(store: ArtifactStore, stage_dir: str) -> Iterator[None]:
    """Turn a full disk inside the block (in this process or a Ray worker) into one
    :class:`ArtifactError` naming where, with the way out; the unfinished folder stays
    without a manifest, so a rerun after space is freed resumes its committed units."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, ArtifactError) or not is_disk_full(exc):
            raise
        free = store.free_bytes(stage_dir)
        room = f" ({free / 2**20:.1f} MiB free now)" if free is not None else ""
        raise ArtifactError(
            f"{store.uri(stage_dir)}: no space left on the device{room}; free space (or move "
            f"the workspace) and rerun: finished units are kept, nothing was committed"
        ) from None
