"""onnxruntime backend (CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.errors import ModelError

# 3 = errors only: onnxruntime otherwise warns about every unused initializer and shape merge.
ort.set_default_logger_severity(3)


class OnnxRuntime:
    def __init__(self, path: Path | bytes, threads: int = 1) -> None:
        """`path`: the model file, or a serialised model built in memory (e.g. with extra outputs)."""
        so = ort.SessionOptions()
        self.threads = max(1, threads)  # intra-op threads of this session (edge/pipeline.py shares them out)
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            source = path if isinstance(path, bytes) else str(path)
            self._session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            what = "the model built in memory" if isinstance(path, bytes) else path
            raise ModelError(f"{what}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self.output_names, feeds)
