"""Shared fixtures: the evaluation data folder and an isolated state directory for prepared models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    return Path(os.environ.get("FACEGATE_DATA", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def data() -> Path:
    root = data_root()
    if not (root / "lfw" / "images").is_dir():
        pytest.skip(f"evaluation data not found at {root} (set FACEGATE_DATA to the shared folder)")
    return root


@pytest.fixture(scope="session")
def lfw(data: Path) -> Path:
    return data / "lfw"


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state directory for the whole run: models are prepared once, nothing touches the user's."""
    path = tmp_path_factory.mktemp("state")
    os.environ["FACEGATE_STATE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def pipeline():
    from edge.pipeline import FacePipeline

    return FacePipeline()
