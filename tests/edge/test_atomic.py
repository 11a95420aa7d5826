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
