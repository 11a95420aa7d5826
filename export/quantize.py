"""ONNX → int8 (onnxruntime static QDQ, per-channel, calibrated on face crops) and ONNX → fp16.

Static quantisation fixes every activation scale from calibration data, so convolutions run as integer
kernels; dynamic quantisation re-derives activation scales per call and is slow for convolutions.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from export.bundle import ExportError


class TensorReader:
    """onnxruntime's CalibrationDataReader protocol over preprocessed inputs, `batch` rows per call.

    Every batch has the same size (a short tail is dropped): the histogram calibrators stack them.
    """

    def __init__(self, input_name: str, inputs: np.ndarray, batch: int = 1) -> None:
        self.input_name = input_name
        self.inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        self.batch = batch
        self._at = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._at + self.batch > len(self.inputs):
            return None
        chunk = self.inputs[self._at:self._at + self.batch]
        self._at += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self._at = 0


def quantize_int8(src: Path, out: Path, calibration: np.ndarray,
                  op_types: Sequence[str] = ("Conv", "Gemm", "MatMul"),
                  method: str = "Percentile") -> Path:
    """Static QDQ int8 of `src`: symmetric int8 weights per output channel, uint8 activations per tensor.

    `calibration` holds (N, …) inputs exactly as the device feeds the graph (see edge.embed.to_input).
    Only `op_types` are quantised. Elementwise ops in between stay float, where onnxruntime fuses the
    Q/DQ pairs around each quantised op into integer kernels.

    Measured on SFace (200 calibration crops, 200 held-out crops): asymmetric uint8 activations with
    percentile (99.999 %) ranges gave mean cosine 0.9945 to fp32 and LFW View 2 accuracy +0.03 pp; min-max
    ranges gave 0.9875, symmetric int8 activations 0.983 (they waste half the range on post-PReLU maps).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ExportError("int8 quantisation needs calibration inputs")
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference and graph optimisation first (batch norms folded into convolutions), as
        # onnxruntime recommends: quantising the optimised graph calibrates what actually runs.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(out), TensorReader(input_name, calibration),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types), per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return Path(out)


def convert_fp16(src: Path, out: Path) -> Path:
    """Weights and compute in fp16 with float32 inputs and outputs (Casts at the edges of the graph)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(out))
    return Path(out)
