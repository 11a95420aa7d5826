"""PyTorch → TFLite: fp32 and int8 with litert-torch, fp16 weights with ai-edge-quantizer.

Every file has one fixed-batch signature (batch 1 by default): LiteRT runs fixed shapes fastest, and the
device backend runs a larger batch item by item. int8 is post-training static quantisation through PT2E:
per-channel symmetric int8 weights, per-tensor int8 activations observed on real calibration inputs.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch

from export.bundle import ExportError
from export.recipes import quiet

# Weight-carrying TFLite ops whose weights fp16 stores as half floats; their compute stays float32.
FP16_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_2D_TRANSPOSE")


def _sample(shape: tuple[int, ...], batch: int) -> torch.Tensor:
    return torch.zeros((batch, *shape[1:]), dtype=torch.float32)


def convert_fp32(module: torch.nn.Module, input_shape: tuple[int, ...], out: Path, batch: int = 1) -> Path:
    import litert_torch

    module = module.eval()
    with quiet(), torch.no_grad():
        edge = litert_torch.convert(module, (_sample(input_shape, batch),))
        edge.export(str(out))
    return Path(out)


def convert_int8(module: torch.nn.Module, input_shape: tuple[int, ...], calibration: np.ndarray, out: Path,
                 batch: int = 1) -> Path:
    """Static int8 via PT2E; `calibration` holds (N, *input_shape[1:]) float inputs, already preprocessed."""
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

    if len(calibration) == 0:
        raise ExportError("int8 conversion needs calibration inputs")
    sample = _sample(input_shape, batch)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    with quiet(), torch.no_grad():
        graph = torch.export.export(module.eval(), (sample,)).module()
        graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
        x = torch.from_numpy(np.ascontiguousarray(calibration, dtype=np.float32))
        for start in range(0, len(x), batch):
            chunk = x[start:start + batch]
            if len(chunk) == batch:  # the exported graph has the fixed batch
                graph(chunk)
        graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
        graph = move_exported_model_to_eval(graph)  # what .eval() does, for an exported graph
        graph.training = False  # the flag litert-torch checks; the call above leaves it set
        edge = litert_torch.convert(graph, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        edge.export(str(out))
    return Path(out)


def to_fp16(src: Path, out: Path) -> Path:
    """A float TFLite file with its conv / fully-connected weights stored as fp16 (half the size)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer import quantizer as aeq

    q = aeq.Quantizer(str(src))
    for op in FP16_OPS:
        q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName[op], num_bits=16,
                                 algorithm_key=aeq.AlgorithmName.FLOAT_CASTING)
    with quiet(), contextlib.redirect_stderr(io.StringIO()):  # its progress bars ignore the flag
        result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
    if result.quantized_model is None:
        raise ExportError(f"{src}: ai-edge-quantizer produced no model")
    Path(out).write_bytes(bytes(result.quantized_model))
    return Path(out)
