"""onnxruntime's contrib ops (``com.microsoft``) rewritten into standard ONNX ops.

Models saved after onnxruntime's graph optimizer, its transformers optimizer or its
QOperator-format quantizer (the ONNX model zoo's ``-int8`` models) hold ops of the
``com.microsoft`` domain that only onnxruntime runs: ``FusedConv``, ``FusedMatMul``, the GELU
variants, ``SkipLayerNormalization``, ``BiasAdd``, and the quantized element-wise ops
(``QLinearAdd``, ``QLinearGlobalAveragePool``, ...). Each is rewritten here into the standard
ops it computes (contrib op schemas in onnxruntime's ``docs/ContribOperators.md``), so the rest
of the pipeline (fusions, the int8 kernels of QDQ models) and the lowering take them like any
export. A variant not covered (an attribute value, an optional output in use) is left as it is;
``compile`` then runs that node in onnxruntime and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from lepton_opt.passes.base import Pass, PassResult

MS = "com.microsoft"


def _const(tape: ir.tape.Tape, value, dtype=np.float32) -> ir.Value:
    return tape.op("Constant", [], attributes={"value": ir.tensor(np.asarray(value, dtype))})


def _attr(node: ir.Node, name: str, default=None):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _used(value: ir.Value | None) -> bool:
    return value is not None and (bool(value.uses()) or value.is_graph_output())


def _gelu_erf(tape, x: ir.Value) -> ir.Value:
    inner = tape.op("Erf", [tape.op("Mul", [x, _const(tape, 1 / math.sqrt(2))])])
    return tape.op("Mul", [tape.op("Mul", [x, _const(tape, 0.5)]), tape.op("Add", [inner, _const(tape, 1.0)])])


def _activation(tape, x: ir.Value, name: str, params: list[float]) -> ir.Value | None:
    if name == "Relu":
        return tape.op("Relu", [x])
    if name in ("Tanh", "Sigmoid"):
        return tape.op(name, [x])
    if name == "LeakyRelu":
        return tape.op("LeakyRelu", [x], attributes={"alpha": float(params[0]) if params else 0.01})
    if name == "HardSigmoid":
        alpha, beta = (list(params) + [0.2, 0.5][len(params):])[:2]
        return tape.op("HardSigmoid", [x], attributes={"alpha": float(alpha), "beta": float(beta)})
    if name == "Clip" and len(params) == 2:
        return tape.op("Clip", [x, _const(tape, params[0]), _const(tape, params[1])])
    return None


def _fused_conv(tape, node):
    activation = _attr(node, "activation", "")
    conv_attrs = {k: a for k, a in node.attributes.items() if k not in ("activation", "activation_params")}
    x, w, b, z = (_input(node, i) for i in range(4))
    y = tape.op("Conv", [x, w] + ([b] if b is not None else []), attributes=conv_attrs)
    if z is not None:
        y = tape.op("Add", [y, z])
    if not activation:
        return [y]
    out = _activation(tape, y, activation, list(_attr(node, "activation_params", []) or []))
    return None if out is None else [out]


def _fused_matmul(tape, node):
    if _attr(node, "transBatchA", 0) or _attr(node, "transBatchB", 0):
        return None
    a, b = node.inputs[0], node.inputs[1]
    for flag, value in (("transA", a), ("transB", b)):
        if _attr(node, flag, 0):
            if value.shape is None:
                return None
            rank = len(value.shape)
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            transposed = tape.op("Transpose", [value], attributes={"perm": perm})
            a, b = (transposed, b) if flag == "transA" else (a, transposed)
    y = tape.op("MatMul", [a, b])
    alpha = float(_attr(node, "alpha", 1.0))
    return [y if alpha == 1.0 else tape.op("Mul", [y, _const(tape, alpha)])]


def _gelu(tape, node):
    return [_gelu_erf(tape, node.inputs[0])]


def _bias_gelu(tape, node):
    return [_gelu_erf(tape, tape.op("Add", [node.inputs[0], node.inputs[1]]))]


def _fast_gelu(tape, node):
    x = node.inputs[0]
    bias = _input(node, 1)
    if bias is not None:
        x = tape.op("Add", [x, bias])
    cube = tape.op("Mul", [tape.op("Mul", [x, x]), x])
    inner = tape.op("Mul", [tape.op("Add", [x, tape.op("Mul", [cube, _const(tape, 0.044715)])]),
                            _const(tape, math.sqrt(2 / math.pi))])
    half = tape.op("Mul", [x, _const(tape, 0.5)])
    return [tape.op("Mul", [half, tape.op("Add", [tape.op("Tanh", [inner]), _const(tape, 1.0)])])]


def _quick_gelu(tape, node):
    x = node.inputs[0]
    alpha = float(_attr(node, "alpha", 1.702))
    return [tape.op("Mul", [x, tape.op("Sigmoid", [tape.op("Mul", [x, _const(tape, alpha)])])])]


def _bias_add(tape, node):
    x, bias, skip = node.inputs[:3]
    return [tape.op("Add", [tape.op("Add", [x, bias]), skip])]


def _skip_layer_norm(tape, node, opset: int):
    # outputs: output, mean, inv_std_var, input_skip_bias_sum; mean/inv_std_var are training outputs
    if opset < 17 or any(_used(v) for v in node.outputs[1:3]):
        return None
    x, skip, gamma, beta, bias = (_input(node, i) for i in range(5))
    total = tape.op("Add", [x, skip])
    if bias is not None:
        total = tape.op("Add", [total, bias])
    inputs = [total, gamma] + ([beta] if beta is not None else [])
    y = tape.op("LayerNormalization", inputs,
                attributes={"axis": -1, "epsilon": float(_attr(node, "epsilon", 1e-12))})
    return [y, None, None, total]


def _dq(tape, x, scale, zero_point):
    return tape.op("DequantizeLinear", [x, scale, zero_point])


def _q(tape, y, scale, zero_point):
    return tape.op("QuantizeLinear", [y, scale, zero_point])


def _qlinear_binary(op_type: str):
    def expand(tape, node):
        a, a_s, a_zp, b, b_s, b_zp, c_s, c_zp = (_input(node, i) for i in range(8))
        if a_zp is None or b_zp is None or c_zp is None:
            return None
        return [_q(tape, tape.op(op_type, [_dq(tape, a, a_s, a_zp), _dq(tape, b, b_s, b_zp)]), c_s, c_zp)]
    return expand


def _qlinear_unary(op_type: str, attributes: Callable[[ir.Node], dict] = lambda node: {}):
    def expand(tape, node):
        x, x_s, x_zp, y_s, y_zp = (_input(node, i) for i in range(5))
        if x_zp is None or y_zp is None or _attr(node, "channels_last", 0):
            return None
        return [_q(tape, tape.op(op_type, [_dq(tape, x, x_s, x_zp)], attributes=attributes(node)), y_s, y_zp)]
    return expand


def _qlinear_concat(tape, node):
    y_s, y_zp, *rest = node.inputs
    if len(rest) % 3 or y_zp is None or any(v is None for v in rest):
        return None
    parts = [_dq(tape, rest[i], rest[i + 1], rest[i + 2]) for i in range(0, len(rest), 3)]
    return [_q(tape, tape.op("Concat", parts, attributes={"axis": int(_attr(node, "axis"))}), y_s, y_zp)]


def _pool_attributes(node: ir.Node) -> dict:
    return {k: a for k, a in node.attributes.items() if k != "channels_last"}


EXPANSIONS: dict[str, Callable] = {
    "FusedConv": _fused_conv,
    "FusedMatMul": _fused_matmul,
    "Gelu": _gelu,
    "BiasGelu": _bias_gelu,
    "FastGelu": _fast_gelu,
    "QuickGelu": _quick_gelu,
    "BiasAdd": _bias_add,
    "SkipLayerNormalization": _skip_layer_norm,
    "QLinearAdd": _qlinear_binary("Add"),
    "QLinearMul": _qlinear_binary("Mul"),
    "QLinearSigmoid": _qlinear_unary("Sigmoid"),
    "QLinearLeakyRelu": _qlinear_unary("LeakyRelu", lambda n: {"alpha": float(_attr(n, "alpha", 0.01))}),
    "QLinearGlobalAveragePool": _qlinear_unary("GlobalAveragePool"),
    "QLinearAveragePool": _qlinear_unary("AveragePool", _pool_attributes),
    "QLinearConcat": _qlinear_concat,
}


class ExpandContribOps(Pass):
    """Rewrite onnxruntime contrib ops (``com.microsoft``) into the standard ops they compute."""

    name = "expand-contrib-ops"
    description = ("onnxruntime's FusedConv, FusedMatMul, Gelu/FastGelu/BiasGelu/QuickGelu, BiasAdd, "
                   "SkipLayerNormalization and QLinearAdd/Mul/Sigmoid/LeakyRelu/Concat/(Global)AveragePool "
                   "as standard ONNX ops")

    def call(self, model: ir.Model) -> PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        rewrites = 0
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            expand = EXPANSIONS.get(node.op_type) if node.domain == MS else None
            if expand is None or node.graph is None:
                continue
            tape = ir.tape.Tape()
            outs = expand(tape, node, opset) if expand is _skip_layer_norm else expand(tape, node)
            if outs is None:
                continue
            outs = list(outs) + [None] * (len(node.outputs) - len(outs))
            if any(new is None and _used(old) for old, new in zip(node.outputs, outs)):
                continue
            old = [v for v, new in zip(node.outputs, outs) if new is not None]
            new = [v for v in outs if v is not None]
            for value, replacement in zip(old, new):
                name, value.name = value.name, None
                replacement.name = name  # keeps value (and graph output) names
            ir.convenience.replace_nodes_and_values(node.graph, node, [node], tape.nodes, old, new)
            rewrites += 1
        if rewrites and "" not in model.opset_imports and "ai.onnx" not in model.opset_imports:
            model.opset_imports[""] = 17
        return PassResult(model, rewrites > 0, rewrites)
