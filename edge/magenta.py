"""Magenta's arbitrary-style TFLite models as installed bundles: `facegate models install magenta`.

Three upstream files (edge.models.install.KNOWN pins their URLs and sha256): the style predictor (a 256²
painting → a 100-d style vector) and the transformer (a 384² photo + the vector → the stylised photo) in
float16 and int8. Each becomes a bundle `<model dir>/<name>/` whose manifest describes the file, so
`facegate stylize --style-image` finds them by name, hash-checked, like every other model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ModelError
from edge.models.registry import Registry, sha256_file


@dataclass(frozen=True)
class MagentaFile:
    file: str  # the upstream file name
    size: int  # the square input the graph takes
    role: str  # "predict" or "transfer"
    variant: str  # "quantized" (int8 weights) or "f16"


FILES = {
    "magenta-predict": MagentaFile("style_predict_quantized_256.tflite", 256, "predict", "quantized"),
    "magenta-transfer-f16": MagentaFile("style_transfer_f16_384.tflite", 384, "transfer", "f16"),
    "magenta-transfer-quantized": MagentaFile("style_transfer_quantized_384.tflite", 384, "transfer", "quantized"),
}
VARIANTS = ("f16", "quantized")
PREDICT = "magenta-predict"
INSTALL_HINT = ("install them with `facegate models install magenta` (or, without internet, `facegate models "
                "install magenta --file style_predict_quantized_256.tflite --file style_transfer_f16_384.tflite "
                "--file style_transfer_quantized_384.tflite`), or give --magenta-dir DIR")


def transfer_name(variant: str) -> str:
    if variant not in VARIANTS:
        raise ModelError(f"Magenta variant must be one of {list(VARIANTS)}, not {variant!r}")
    return f"magenta-transfer-{variant}"


def manifest(name: str) -> dict[str, Any]:
    """The bundle manifest of one Magenta file (without file and sha256)."""
    from edge.models.install import KNOWN

    f = FILES[name]
    data: dict[str, Any] = {
        "name": name, "task": "stylize", "licence": "Apache-2.0", "runtime": "litert",
        # RGB in [0, 1] (0–255 pixels / 255), NHWC, batch 1.
        "input": {"size": [f.size, f.size], "layout": "NHWC", "colour": "RGB"},
        "normalisation": {"mean": [0, 0, 0], "std": [255, 255, 255]},
        "source": {"upstream": KNOWN[name].url, "recipe": "facegate models install (edge.magenta)"},
        "extra": {"magenta": f.role, "variant": f.variant, "upstream_file": f.file},
    }
    if f.role == "predict":
        data["output_dim"] = 100  # the style vector
    return data


def install_from_file(path: Path, model_dir: Path) -> list[str]:
    """A pinned Magenta file (already hash-checked as a known name's) → its bundle in `model_dir`."""
    from edge.models.install import KNOWN, install_model_file

    digest = sha256_file(path)
    name = next((n for n in FILES if KNOWN[n].sha256 == digest), None)
    if name is None:
        raise ModelError(f"{path}: not one of the pinned Magenta files")
    return [install_model_file(Path(path), manifest(name), Path(model_dir))]


def installed_files(variant: str, registry: Registry | None = None) -> tuple[Path, Path]:
    """The verified predictor and `variant` transformer files of the installed bundles."""
    registry = registry or Registry()
    paths = []
    for name in (PREDICT, transfer_name(variant)):
        if name not in registry.names():
            raise ModelError(f"Magenta's arbitrary-style model {name} is not installed in {registry.model_dir}: "
                             + INSTALL_HINT)
        paths.append(registry.verify(registry.manifest(name)))
    return paths[0], paths[1]
