"""Crash-safe file updates: a reader sees the old file (or folder) or the new one, never a half-written one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.errors import FacegateError


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk, or a power cut can bring the old name back.
    with contextlib.suppress(OSError):
        fsync(folder)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file (mode 0600) in the same folder, fsync, then rename over `path`.

    Only a regular file (or nothing) is replaced: renaming over /dev/null, a FIFO or a folder as root would
    destroy it, so those are refused.
    """
    path = Path(path)
    if (path.exists() and not path.is_file()) or (path.is_symlink() and not path.resolve().is_file()):
        raise FacegateError(f"{path} is not a regular file: not replacing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def replace_dir(tmp: Path, target: Path, staging: Path) -> None:
    """Rename the complete folder `tmp` to `target`, replacing an older one only once the new one is whole.

    `staging` (same file system) holds the old folder for the moment between the two renames; on failure the
    old folder is put back.
    """
    old = None
    if target.exists():
        old = Path(staging) / f"{target.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


@contextmanager
def staged_folder(target: Path, staging: Path) -> Iterator[Path]:
    """A fresh folder (mode 0755: a service user must read what is installed) inside `staging` to fill; when the
    block ends without an error it replaces `target` whole (`replace_dir`), otherwise it is removed. `staging`
    (same file system as `target`) is removed afterwards when empty: another writer may be assembling there."""
    target, staging = Path(target), Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=staging, prefix=f"{target.name}."))
    try:
        tmp.chmod(0o755)
        yield tmp
        replace_dir(tmp, target, staging)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            staging.rmdir()
