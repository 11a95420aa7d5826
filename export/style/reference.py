"""The benchmark's reference style losses: J_style after `steps` Adam steps from C, per style and portrait.

They depend only on the costs, the paintings and the portraits, not on any trained net, so they are
computed once (on an accelerator: minutes; on one CPU core: about an hour) and read from
reference_losses.json, which ships next to this module because `facegate style bench` and the export read
it by default. The file records the size, steps, rate and costs it was computed with; a reader that asks
for others gets nothing from it and computes its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from export.style import StyleError
from export.style.costs import CostSettings, build_cost
from export.style.images import load_image
from export.style.optimize import optimize

REFERENCE_FILE = Path(__file__).with_name("reference_losses.json")


@dataclass
class BenchStyle:
    name: str
    painting: Path
    costs: CostSettings


def content_key(p: Path) -> str:
    """How a portrait is named in the reference: <identity>/<file>."""
    return f"{Path(p).parent.name}/{Path(p).name}"


def load_reference(path: Path | None = None) -> dict[str, Any]:
    path = Path(path) if path else REFERENCE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StyleError(f"{path}: cannot read reference losses ({exc})") from None


def matches(reference: dict[str, Any], size: int, steps: int, lr: float) -> bool:
    return (reference.get("size"), reference.get("steps"), reference.get("lr")) == (size, steps, lr)


def reference_for(reference: dict[str, Any] | None, style: str, costs: CostSettings, size: int,
                  steps: int = 500, lr: float = 0.01) -> dict[str, float] | None:
    """{content key: reference J_style} for `style`, or None unless `reference` was computed for this style
    with these costs at this size, step count and rate."""
    if reference is None or not matches(reference, size, steps, lr):
        return None
    if reference.get("costs", {}).get(style) != costs.to_dict():
        return None
    return reference.get("losses", {}).get(style)


def reference_style_losses(styles: Sequence[BenchStyle], contents: Sequence[Path], size: int = 512,
                           steps: int = 500, lr: float = 0.01, device: str = "cpu", weights: Path | None = None,
                           progress: bool = False) -> dict[str, Any]:
    """J_style after `steps` Adam steps from C, per style and content: the benchmark's reference (on an
    accelerator this is minutes, not the CPU's hour; fp32 throughout, no TF32)."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    out: dict[str, Any] = {"size": size, "steps": steps, "lr": lr, "device": device, "losses": {}, "costs": {}}
    for st in styles:
        cost = build_cost(st.painting, st.costs, weights, device=device)
        out["costs"][st.name] = st.costs.to_dict()
        out["losses"][st.name] = {}
        for p in contents:
            c = load_image(p, size=(size, size)).to(device)
            r = optimize(cost, c, steps=steps, lr=lr, progress=progress, record_every=steps)
            out["losses"][st.name][content_key(p)] = r.history[-1]["style"]
    return out
