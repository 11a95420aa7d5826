"""Inference runtimes behind one small protocol (base.py); the manifest's `runtime` key chooses the backend.

RUNTIMES is the one table of backends: name → the module and class that implement Runtime. Adding a runtime is
one module plus one row here; manifests are validated against this table.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from edge.errors import ModelError
from edge.runtime.base import Runtime

RUNTIMES: dict[str, str] = {
    "onnxruntime": "edge.runtime.onnx:OnnxRuntime",
    "litert": "edge.runtime.litert:LiteRtRuntime",
}


def open_runtime(kind: str, path: Path, threads: int = 1) -> Runtime:
    if kind not in RUNTIMES:
        raise ModelError(f"runtime {kind!r} is not available (known: {', '.join(RUNTIMES)})")
    module, _, cls = RUNTIMES[kind].partition(":")
    return getattr(importlib.import_module(module), cls)(path, threads=threads)


__all__ = ["RUNTIMES", "Runtime", "open_runtime"]
