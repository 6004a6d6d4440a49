"""Shared models as ONNX: a graph built with the `onnx` package from a model's signature
and parameters, and onnxruntime sessions to run it (the CUDA provider where the host has
a GPU and the build supports it, the CPU provider otherwise, without error noise)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rootfs.models import Signature

OPSET = 17
INPUT_NAME = "x"
OUTPUT_NAME = "y"


def to_onnx(signature: Signature, params: dict[str, np.ndarray], model_name: str, version: int) -> bytes:
    """The forward pass of rootfs.models as an ONNX graph: MatMul + Add per layer, ReLU
    between layers, then Sigmoid (logistic), Softmax (softmax, mlp) or nothing (linear)."""
    nodes, initializers = [], []
    current = INPUT_NAME
    layers = len(signature.layer_sizes()) - 1
    for index in range(layers):
        weight, bias = f"layer{index}.weight", f"layer{index}.bias"
        initializers.append(numpy_helper.from_array(params[weight].astype(np.float32), weight))
        initializers.append(numpy_helper.from_array(params[bias].astype(np.float32), bias))
        nodes.append(helper.make_node("MatMul", [current, weight], [f"mm{index}"]))
        nodes.append(helper.make_node("Add", [f"mm{index}", bias], [f"z{index}"]))
        current = f"z{index}"
        if index < layers - 1:
            nodes.append(helper.make_node("Relu", [current], [f"h{index}"]))
            current = f"h{index}"
    if signature.family == "logistic":
        nodes.append(helper.make_node("Sigmoid", [current], [OUTPUT_NAME]))
    elif signature.family in ("softmax", "mlp"):
        nodes.append(helper.make_node("Softmax", [current], [OUTPUT_NAME], axis=1))
    else:
        nodes.append(helper.make_node("Identity", [current], [OUTPUT_NAME]))
    graph = helper.make_graph(
        nodes,
        f"{model_name}-v{version}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", signature.input_dim])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", signature.output_dim])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, producer_name="wondercraft", opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8
    )
    model.doc_string = f"{model_name} version {version} ({signature.family})"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def providers() -> list[str]:
    """CUDA first only when a GPU device node exists and the build has the provider;
    asking for CUDA on a CPU-only host makes onnxruntime log errors for every session."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    has_gpu = any(p.name[len("nvidia") :].isdigit() for p in Path("/dev").glob("nvidia*"))
    chosen = ["CUDAExecutionProvider"] if has_gpu and "CUDAExecutionProvider" in available else []
    return [*chosen, "CPUExecutionProvider"]


class OnnxRunner:
    """Sessions cached by the model's content hash (versions are immutable)."""

    def __init__(self, capacity: int = 16) -> None:
        self._sessions: OrderedDict[str, object] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        self._providers = providers()

    @property
    def provider(self) -> str:
        return self._providers[0]

    def session(self, key: str, model_bytes: bytes):
        import onnxruntime as ort

        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=self._providers)
        with self._lock:
            self._sessions[key] = session
            while len(self._sessions) > self._capacity:
                self._sessions.popitem(last=False)
        return session

    def run(self, key: str, model_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
        session = self.session(key, model_bytes)
        return session.run([OUTPUT_NAME], {INPUT_NAME: inputs.astype(np.float32)})[0]
