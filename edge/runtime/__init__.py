"""Inference runtimes behind one small protocol; the manifest's `runtime` key chooses the backend."""

from __future__ import annotations

from pathlib import Path

from edge.errors import ModelError
from edge.runtime.base import Runtime


def open_runtime(kind: str, path: Path, threads: int = 1) -> Runtime:
    if kind == "onnxruntime":
        from edge.runtime.onnx import OnnxRuntime

        return OnnxRuntime(path, threads=threads)
    if kind == "litert":
        from edge.runtime.litert import LiteRtRuntime

        return LiteRtRuntime(path, threads=threads)
    raise ModelError(f"runtime {kind!r} is not available (known: onnxruntime, litert)")


__all__ = ["Runtime", "open_runtime"]
