"""Writing an ONNX graph on the device with `onnx.helper` (no PyTorch): the node and constant emitter and the
final checked model that the MiniFASNet and dlib-resnet converters share."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.errors import ModelError

OPSET = 17
IR_VERSION = 8  # readable by onnxruntime ≥ 1.10, so older device images can run what is built here


class GraphBuilder:
    """Collects nodes and initialisers; node names are numbered so every one is unique."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, name: str, value: np.ndarray, dtype: Any = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        """One node; its output is `out`, or a fresh name when none is given."""
        self.count += 1
        out = out or f"{op.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.count}", **attrs))
        return out

    def model(self, name: str, input_name: str, input_shape: list[Any], output: str, output_shape: list[Any],
              doc: str, hint: str = "") -> onnx.ModelProto:
        """The graph as a model, checked in full: a builder fed the wrong weights fails here, not at run time."""
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
            initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="facegate",
                                  doc_string=doc)
        model.ir_version = IR_VERSION
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ModelError(f"{name}: the built graph is not valid ONNX ({exc}){hint}") from None
        return model
