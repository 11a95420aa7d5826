"""LiteRT (TensorFlow Lite) backend for .tflite files, behind the same protocol as onnxruntime.

Uses `ai-edge-litert` (`ai_edge_litert.interpreter`). Where only the older `tflite-runtime` wheel exists (some
ARM boards), its `tflite_runtime.interpreter.Interpreter` has the same API and is imported instead; that path
is documented, not tested in CI.

Exported TFLite files have a fixed batch (usually 1), so a larger batch is run item by item; inputs and
outputs of fully-integer files are (de)quantised here with the file's own scale and zero point, so callers
always trade float32 arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter  # the pre-2024 wheel name
        except ImportError:
            raise ModelError("runtime 'litert' needs ai-edge-litert (pip install ai-edge-litert) "
                             "or tflite-runtime") from None
    return Interpreter


class LiteRtRuntime:
    def __init__(self, path: Path, threads: int = 1) -> None:
        interpreter = _interpreter_class()
        try:
            self._it = interpreter(model_path=str(path), num_threads=max(1, threads))
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: LiteRT cannot load it ({str(exc).splitlines()[0]})") from None
        # The signature's names ("args_0", "output_0") are stable across converters; the tensor names carry
        # converter-specific prefixes. Files without a signature (older converters) use the tensor names.
        sigs = self._it.get_signature_list()
        self._runner = None
        if len(sigs) == 1:
            key = next(iter(sigs))
            self._runner = self._it.get_signature_runner(key)
            self.input_names = list(sigs[key]["inputs"])
            self.output_names = list(sigs[key]["outputs"])
            self._in_details = self._runner.get_input_details()
            self._out_details = self._runner.get_output_details()
        else:
            self._in_details = {d["name"]: d for d in self._it.get_input_details()}
            self._out_details = {d["name"]: d for d in self._it.get_output_details()}
            self.input_names = list(self._in_details)
            self.output_names = list(self._out_details)
        self._fixed_batch = {int(d["shape"][0]) for d in self._in_details.values() if len(d["shape"])} == {1}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = {len(v) for v in feeds.values()}
        if self._fixed_batch and len(batch) == 1 and batch != {1}:
            # A fixed-batch file: one call per item, outputs stacked back into a batch.
            n = batch.pop()
            parts = [self._run_once({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(n)]
            return [np.concatenate([p[j] for p in parts]) for j in range(len(self.output_names))]
        return self._run_once(feeds)

    def _run_once(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        unknown = set(feeds) - set(self.input_names)
        if unknown:
            raise ModelError(f"unknown input(s) {sorted(unknown)} (inputs: {self.input_names})")
        cast = {k: _quantise(np.asarray(v), self._in_details[k]) for k, v in feeds.items()}
        if self._runner is not None:
            out = self._runner(**cast)
            return [_dequantise(out[n], self._out_details[n]) for n in self.output_names]
        for name, value in cast.items():
            self._it.set_tensor(self._in_details[name]["index"], value)
        self._it.invoke()
        return [_dequantise(self._it.get_tensor(self._out_details[n]["index"]), self._out_details[n])
                for n in self.output_names]


def _quantise(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind in "iu":
        scale, zero = detail["quantization"]
        if scale:
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return np.ascontiguousarray(x, dtype=dtype)


def _dequantise(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if y.dtype.kind in "iu":
        scale, zero = detail["quantization"]
        if scale:
            return (y.astype(np.float32) - zero) * np.float32(scale)
    # get_tensor may return a view into the interpreter's buffer, overwritten by the next call.
    return np.array(y, dtype=np.float32 if y.dtype == np.float16 else y.dtype)
