"""Int8 quantization of a fused BERT graph in which every row's vector depends on that row alone.

onnxruntime's quantize_dynamic scales activations once per tensor, i.e. per batch, so the same text
came out slightly different alone and beside others. Here every activation scale is taken over one
token's row, and weights are quantized once at build time:

- feed-forward down projections (the MatMuls fed by GELU, whose activations have outliers) become
  MatMulNBits with 8-bit weights in blocks along K; accuracy_level 4 makes the CPU kernel quantize
  each row's activations to int8 per block and multiply in int8;
- every other MatMul (query, key, value, attention output, feed-forward up) becomes uint8 x int8
  MatMulInteger: the activation row is scaled by its own absolute maximum around zero point 128, the
  weights per output column, and the int32 result is scaled back to float.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"


def quantize_rows(model: onnx.ModelProto, block_size: int, accuracy_level: int) -> list[str]:
    """Rewrite model's constant-weight MatMuls in place; returns the names of the GELU-fed ones."""
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    gelu_outputs = {name for node in graph.node if "Gelu" in node.op_type for name in node.output}
    rewriter = _Rewriter()
    nodes, gelu_fed = [], []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        if weight.ndim != 2:
            raise ValueError(f"{node.name}: expected a 2-D weight, got shape {weight.shape}")
        if node.input[0] in gelu_outputs:
            gelu_fed.append(node.name)
            nodes.append(rewriter.nbits(node, weight, block_size, accuracy_level))
        else:
            nodes.extend(rewriter.per_row(node, weight))
    used = {name for node in nodes for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used] + rewriter.constants
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]  # shapes of the replaced float tensors no longer hold
    if not any(opset.domain == MS_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return gelu_fed


class _Rewriter:
    """Builds the replacement nodes; an input shared by several MatMuls (Q, K, V) is quantized once."""

    def __init__(self):
        self.constants: list[onnx.TensorProto] = []
        self.quantized: dict[str, tuple[list[onnx.NodeProto], str, str]] = {}
        self.zero_point = self.constant("row_quant_zero_point", np.array(128, np.uint8))
        self.offset = self.constant("row_quant_offset", np.array(128.5, np.float32))
        self.step = self.constant("row_quant_step", np.array(1 / 127, np.float32))
        self.floor = self.constant("row_quant_floor", np.array(1e-12, np.float32))

    def constant(self, name: str, value: np.ndarray) -> str:
        self.constants.append(numpy_helper.from_array(value, name))
        return name

    def nbits(self, node: onnx.NodeProto, weight: np.ndarray, block_size: int, accuracy_level: int) -> onnx.NodeProto:
        packed, scales, zero_points = block_quantize(weight, block_size)
        name = node.input[1]
        inputs = [
            node.input[0],
            self.constant(f"{name}_q8", packed),
            self.constant(f"{name}_scales", scales),
            self.constant(f"{name}_zero_points", zero_points),
        ]
        rows, columns = weight.shape
        return helper.make_node(
            "MatMulNBits",
            inputs,
            list(node.output),
            name=f"{node.name}_q8",
            domain=MS_DOMAIN,
            K=rows,
            N=columns,
            bits=8,
            block_size=block_size,
            accuracy_level=accuracy_level,
        )

    def per_row(self, node: onnx.NodeProto, weight: np.ndarray) -> list[onnx.NodeProto]:
        source = node.input[0]
        fresh = source not in self.quantized
        if fresh:
            self.quantized[source] = self._quantize_rows(source)
        steps, quantized, row_scale = self.quantized[source]
        column_scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127
        weight_q = np.clip(np.round(weight / column_scale), -127, 127).astype(np.int8)
        name = node.input[1]
        prefix = node.name
        product = [
            helper.make_node(
                "MatMulInteger",
                [quantized, self.constant(f"{name}_q8", weight_q), self.zero_point],
                [f"{prefix}_int32"],
                name=f"{prefix}_q8",
            ),
            helper.make_node("Cast", [f"{prefix}_int32"], [f"{prefix}_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{prefix}_float", row_scale], [f"{prefix}_row_scaled"]),
            helper.make_node(
                "Mul",
                [f"{prefix}_row_scaled", self.constant(f"{name}_scales", column_scale.astype(np.float32))],
                list(node.output),
            ),
        ]
        return (steps if fresh else []) + product

    def _quantize_rows(self, source: str) -> tuple[list[onnx.NodeProto], str, str]:
        """uint8 = round(x / scale) + 128 with scale = max|x| / 127 over the last axis: one scale per token."""
        prefix = f"{source}_rowq"
        steps = [
            # max|x| from two reductions: reading x twice is cheaper than writing Abs(x) out.
            helper.make_node("ReduceMax", [source], [f"{prefix}_max"], axes=[-1], keepdims=1),
            helper.make_node("ReduceMin", [source], [f"{prefix}_min"], axes=[-1], keepdims=1),
            helper.make_node("Neg", [f"{prefix}_min"], [f"{prefix}_negated"]),
            helper.make_node("Max", [f"{prefix}_max", f"{prefix}_negated", self.floor], [f"{prefix}_bound"]),
            helper.make_node("Mul", [f"{prefix}_bound", self.step], [f"{prefix}_scale"]),
            helper.make_node("Reciprocal", [f"{prefix}_scale"], [f"{prefix}_inverse"]),
            helper.make_node("Mul", [source, f"{prefix}_inverse"], [f"{prefix}_scaled"]),
            # Cast truncates; every shifted value is positive, so adding 128.5 rounds (halves up).
            helper.make_node("Add", [f"{prefix}_scaled", self.offset], [f"{prefix}_shifted"]),
            helper.make_node("Cast", [f"{prefix}_shifted"], [f"{prefix}_uint8"], to=TensorProto.UINT8),
        ]
        return steps, f"{prefix}_uint8", f"{prefix}_scale"


def block_quantize(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MatMulNBits' 8-bit layout: per output column and block of K rows, uint8 values with a zero point.

    Returns packed [N, blocks, block_size] uint8, scales [N, blocks] float32, zero points [N, blocks] uint8;
    the same numbers as onnxruntime's own quantize_matmul_8bits (asymmetric, zero kept exact).
    """
    rows, columns = weight.shape
    blocks = -(-rows // block_size)
    padded = np.zeros((blocks * block_size, columns), np.float32)
    padded[:rows] = weight
    grouped = padded.T.reshape(columns, blocks, block_size)
    low = np.minimum(grouped.min(axis=-1), 0)
    high = np.maximum(grouped.max(axis=-1), 0)
    scales = ((high - low) / 255).astype(np.float32)
    safe = np.where(scales == 0, 1, scales)
    zero_points = np.clip(np.round(-low / safe), 0, 255)
    packed = np.clip(np.round(grouped / safe[..., None]) + zero_points[..., None], 0, 255)
    return packed.astype(np.uint8), scales, zero_points.astype(np.uint8)
