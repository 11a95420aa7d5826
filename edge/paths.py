"""Where facegate writes: one state directory, never site-packages.

Order: $FACEGATE_STATE_DIR, systemd's $STATE_DIRECTORY (set by StateDirectory=), then the XDG state
directory ($XDG_STATE_HOME or ~/.local/state) + /facegate.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    explicit = os.environ.get("FACEGATE_STATE_DIR")
    if explicit:
        return Path(explicit)
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "facegate"


def model_dir() -> Path:
    """Derived model files: prepared graphs, installed bundles, manifest overrides."""
    return state_dir() / "models"


def data_dir() -> Path:
    """The shared evaluation data ($FACEGATE_DATA, default ../shared next to the checkout)."""
    return Path(os.environ.get("FACEGATE_DATA", "../shared"))
