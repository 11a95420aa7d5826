"""Crash-safe writes replace regular files only: an --out of /dev/null or a folder must not be destroyed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.atomic import atomic_write_bytes
from edge.errors import FacegateError


def test_a_regular_file_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.png"]


@pytest.mark.parametrize("kind", ["fifo", "folder", "link-to-fifo"])
def test_what_is_not_a_regular_file_is_refused_and_kept(tmp_path: Path, kind: str) -> None:
    special = tmp_path / "special"
    if kind == "folder":
        special.mkdir()
    else:
        os.mkfifo(special)
    target = special if kind != "link-to-fifo" else tmp_path / "link"
    if kind == "link-to-fifo":
        target.symlink_to(special)
    with pytest.raises(FacegateError, match="not a regular file"):
        atomic_write_bytes(target, b"x")
    assert special.exists() and not special.is_file() and not list(tmp_path.glob("*.tmp"))


def test_a_staged_folder_replaces_the_old_one_whole_or_not_at_all(tmp_path: Path) -> None:
    from edge.atomic import staged_folder

    target, staging = tmp_path / "bundle", tmp_path / ".staging"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(target, staging) as tmp:
        (tmp / "new").write_text("half")
        raise RuntimeError("the writer failed")
    assert [p.name for p in target.iterdir()] == ["old"] and not staging.exists()
    with staged_folder(target, staging) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"] and oct(target.stat().st_mode & 0o777) == "0o755"
    assert not staging.exists()
