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
    """Static QDQ int8 of `src` with onnxruntime's quantiser: symmetric 7-bit weights per output channel,
    uint8 activations per tensor.

    `calibration` holds (N, …) inputs exactly as the device feeds the graph (see edge.embed.to_input).
    Only `op_types` are quantised; list every op of a ReLU network (Conv, Add, Relu, pools, Gemm) and
    onnxruntime runs it on integer kernels end to end. Graphs with PRelu quantise better with the device's
    own quantiser (edge/models/int8.py after prelu_as_max; see export/int8_ranges.py).

    Weights are 7-bit (`reduce_range`): x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) multiply
    uint8 activations by int8 weights with VPMADDUBSW, which sums two products in int16 and saturates when
    both are large (255·127·2 > 32767). With 8-bit weights SFace's int8 graph gave min cosine 0.79 to fp32 on an
    AVX2-only EPYC (0.98 with the same graph run as float: the scales were right, the kernel overflowed);
    with 7 bits it gives 0.98 everywhere. uint8 weights avoid the overflow too but ran 35 % slower there.
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
            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return Path(out)


def quantize_prelu_net(src: Path, out: Path, steps: Sequence[str], calibration: np.ndarray) -> Path:
    """int8 with the device's own quantiser: `src` prepared with `steps` (PRelu as Max, batch norms folded),
    activation ranges measured on `calibration`, then edge.models.int8.quantize — the graph the device makes
    from an int8 twin's manifest (prepare step quantize_int8), as one file."""
    from edge.models.int8 import quantize as quantize_graph
    from edge.models.int8 import tensors_to_range
    from edge.models.prepare import prepare
    from export.int8_ranges import measure_ranges

    if len(calibration) == 0:
        raise ExportError("int8 quantisation needs calibration inputs")
    graph = prepare(onnx.load(str(src)), list(steps))
    ranges = measure_ranges(graph, calibration, tensors_to_range(graph))
    onnx.save(quantize_graph(graph, ranges), str(out))
    return Path(out)


def convert_fp16(src: Path, out: Path) -> Path:
    """Weights and compute in fp16 with float32 inputs and outputs (Casts at the edges of the graph)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(out))
    return Path(out)
