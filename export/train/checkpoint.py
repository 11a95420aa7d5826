"""Training checkpoints: one crash-safe torch save and one load for every trainer (triplet, style)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from edge.atomic import atomic_write_bytes
from edge.errors import FacegateError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())  # a crash mid-write leaves the previous checkpoint whole


def load_checkpoint(path: Path, error: type[FacegateError] = FacegateError) -> dict[str, Any]:
    """The saved state; `error` (the trainer's own error type) when there is no such file."""
    if not Path(path).is_file():
        raise error(f"{path}: no such checkpoint")
    return torch.load(str(path), map_location="cpu", weights_only=False)
