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


def _dtype(value: ir.Value | None):
    """The numpy type of a floating-point ``value`` (float32 when unknown): the constants an
    expansion adds must match it (a float16 model's GELU takes float16 constants)."""
    # Values an expansion made have no type yet: the type of what they were computed from.
    for _ in range(32):
        producer = value.producer() if value is not None and value.dtype is None else None
        if producer is None or not producer.inputs:
            break
        if producer.op_type == "Cast":
            return _dtype_of_code(producer.attributes["to"].value)
        value = producer.inputs[0]
    dtype = getattr(value, "dtype", None)
    if dtype is not None and dtype.is_floating_point():
        try:
            return dtype.numpy()
        except (TypeError, ValueError, AttributeError):
            pass
    return np.float32


def _dtype_of_code(code) -> type:
    dtype = ir.DataType(code) if not isinstance(code, ir.DataType) else code
    try:
        return dtype.numpy() if dtype.is_floating_point() else np.float32
    except (TypeError, ValueError, AttributeError):
        return np.float32


def _like(tape: ir.tape.Tape, x: ir.Value, value) -> ir.Value:
    return _const(tape, value, _dtype(x))


def _ints(tape: ir.tape.Tape, values) -> ir.Value:
    return _const(tape, list(values), np.int64)


def _reduce(tape, op_type: str, x: ir.Value, axes: list[int], opset: int, keepdims: int = 1) -> ir.Value:
    """ReduceMean/ReduceSum over ``axes`` at the model's opset (axes an attribute before 18, or
    before 13 for ReduceSum)."""
    as_input = opset >= (13 if op_type == "ReduceSum" else 18)
    if as_input:
        return tape.op(op_type, [x, _ints(tape, axes)], attributes={"keepdims": keepdims})
    return tape.op(op_type, [x], attributes={"axes": list(axes), "keepdims": keepdims})


def _unsqueeze(tape, x: ir.Value, axes: list[int], opset: int) -> ir.Value:
    if opset >= 13:
        return tape.op("Unsqueeze", [x, _ints(tape, axes)])
    return tape.op("Unsqueeze", [x], attributes={"axes": list(axes)})


def _layer_norm(tape, x, gamma, beta, epsilon: float, opset: int, simplified: bool = False) -> ir.Value:
    """Normalization over the last axis: LayerNormalization from opset 17, spelled out below it
    and for the RMS form (``simplified``)."""
    if not simplified and opset >= 17:
        inputs = [x, gamma] + ([beta] if beta is not None else [])
        return tape.op("LayerNormalization", inputs, attributes={"axis": -1, "epsilon": float(epsilon)})
    centered = x if simplified else tape.op("Sub", [x, _reduce(tape, "ReduceMean", x, [-1], opset)])
    variance = _reduce(tape, "ReduceMean", tape.op("Mul", [centered, centered]), [-1], opset)
    denominator = tape.op("Sqrt", [tape.op("Add", [variance, _like(tape, x, epsilon)])])
    y = tape.op("Mul", [tape.op("Div", [centered, denominator]), gamma])
    return tape.op("Add", [y, beta]) if beta is not None else y


def _attr(node: ir.Node, name: str, default=None):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _used(value: ir.Value | None) -> bool:
    return value is not None and (bool(value.uses()) or value.is_graph_output())


def _gelu_erf(tape, x: ir.Value) -> ir.Value:
    inner = tape.op("Erf", [tape.op("Mul", [x, _like(tape, x, 1 / math.sqrt(2))])])
    return tape.op("Mul", [tape.op("Mul", [x, _like(tape, x, 0.5)]), tape.op("Add", [inner, _like(tape, x, 1.0)])])


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
        return tape.op("Clip", [x, _like(tape, x, params[0]), _like(tape, x, params[1])])
    return None


def _fused_conv(tape, node, _opset: int):
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


def _fused_matmul(tape, node, _opset: int):
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
    return [y if alpha == 1.0 else tape.op("Mul", [y, _like(tape, node.inputs[0], alpha)])]


def _gelu(tape, node, _opset: int):
    return [_gelu_erf(tape, node.inputs[0])]


def _bias_gelu(tape, node, _opset: int):
    return [_gelu_erf(tape, tape.op("Add", [node.inputs[0], node.inputs[1]]))]


def _fast_gelu(tape, node, _opset: int):
    x = node.inputs[0]
    bias = _input(node, 1)
    if bias is not None:
        x = tape.op("Add", [x, bias])
    cube = tape.op("Mul", [tape.op("Mul", [x, x]), x])
    inner = tape.op("Mul", [tape.op("Add", [x, tape.op("Mul", [cube, _like(tape, x, 0.044715)])]),
                            _like(tape, x, math.sqrt(2 / math.pi))])
    half = tape.op("Mul", [x, _like(tape, x, 0.5)])
    return [tape.op("Mul", [half, tape.op("Add", [tape.op("Tanh", [inner]), _like(tape, x, 1.0)])])]


def _quick_gelu(tape, node, _opset: int):
    x = node.inputs[0]
    alpha = float(_attr(node, "alpha", 1.702))
    return [tape.op("Mul", [x, tape.op("Sigmoid", [tape.op("Mul", [x, _like(tape, x, alpha)])])])]


def _bias_add(tape, node, _opset: int):
    x, bias, skip = node.inputs[:3]
    return [tape.op("Add", [tape.op("Add", [x, bias]), skip])]


def _skip_layer_norm(tape, node, opset: int, simplified: bool = False):
    # outputs: output, mean, inv_std_var, input_skip_bias_sum (the simplified form too, its mean
    # unused); mean/inv_std_var are training outputs
    if any(_used(v) for v in node.outputs[1:3]):
        return None
    if simplified:
        x, skip, gamma, bias = (_input(node, i) for i in range(4))
        beta = None
    else:
        x, skip, gamma, beta, bias = (_input(node, i) for i in range(5))
    total = tape.op("Add", [x, skip])
    if bias is not None:
        total = tape.op("Add", [total, bias])
    y = _layer_norm(tape, total, gamma, beta, _attr(node, "epsilon", 1e-12), opset, simplified)
    return [y, None, None, total]


def _simplified_layer_norm(tape, node, opset: int):
    # onnxruntime's RMS norm (registered in the ONNX domain): Y, inv_std_var (training)
    if _used(_input_or_none(node.outputs, 1)) or _attr(node, "axis", -1) not in (-1, _rank(node.inputs[0]) - 1):
        return None
    x, scale = node.inputs[0], node.inputs[1]
    return [_layer_norm(tape, x, scale, None, _attr(node, "epsilon", 1e-5), opset, simplified=True)]


def _input_or_none(values, index: int):
    return values[index] if index < len(values) else None


def _rank(value: ir.Value) -> int:
    return len(value.shape) if value is not None and value.shape is not None else -2


def _embed_layer_norm(tape, node, opset: int):
    """onnxruntime's BERT embedding: word + position (+ segment) embeddings, layer-normalized;
    mask_index is the count of ones in each row of the mask (right-padded sequences)."""
    ids, segment_ids, word, position, segment, gamma, beta, mask, position_ids = (
        _input(node, i) for i in range(9))
    mask_index, embedding_sum = _input_or_none(node.outputs, 1), _input_or_none(node.outputs, 2)
    if _used(mask_index) and mask is None:
        return None
    total = tape.op("Gather", [word, ids])
    if position_ids is not None:
        total = tape.op("Add", [total, tape.op("Gather", [position, position_ids])])
    else:  # positions 0..S-1: the first S rows of the table
        length = tape.op("Slice", [tape.op("Shape", [ids]), _ints(tape, [1]), _ints(tape, [2])])
        total = tape.op("Add", [total, tape.op("Slice", [position, _ints(tape, [0]), length, _ints(tape, [0])])])
    if segment is not None and segment_ids is not None:
        total = tape.op("Add", [total, tape.op("Gather", [segment, segment_ids])])
    y = _layer_norm(tape, total, gamma, beta, _attr(node, "epsilon", 1e-12), opset)
    index = None
    if _used(mask_index):
        counted = _reduce(tape, "ReduceSum", tape.op("Cast", [mask], attributes={"to": ir.DataType.INT32}),
                          [1], opset, keepdims=0)
        index = tape.op("Cast", [counted], attributes={"to": ir.DataType.INT32})
    return [y, index, total if _used(embedding_sum) else None]


def _attention(tape, node, opset: int):
    """onnxruntime's BERT/GPT Attention (packed QKV projection, no past state): projections,
    heads split, scaled dot product with the mask's filter value, heads merged. A variant with
    past/present state, an attention bias, rotary embedding or a 4-D / start-position mask is
    left to onnxruntime."""
    x, weights, bias, mask, past, attention_bias, past_length = (_input(node, i) for i in range(7))
    if past is not None or attention_bias is not None or past_length is not None or _attr(node, "do_rotary", 0) \
            or _used(_input_or_none(node.outputs, 1)) or weights.shape is None or len(weights.shape) != 2 \
            or not isinstance(weights.shape[1], int) or (mask is not None and mask.shape is None):
        return None
    heads = int(_attr(node, "num_heads"))
    sizes = list(_attr(node, "qkv_hidden_sizes", None) or [weights.shape[1] // 3] * 3)
    if sum(sizes) != weights.shape[1] or sizes[0] != sizes[1] or any(s % heads for s in sizes):
        return None
    mask_rank = len(mask.shape) if mask is not None else 0
    if mask_rank == 1 and (not isinstance(mask.shape[0], int) or x.shape is None or mask.shape[0] != x.shape[0]):
        return None  # [2 * batch]: end and start positions
    if mask_rank > 3:
        return None
    filter_value = float(_attr(node, "mask_filter_value", -10000.0))
    head = sizes[0] // heads
    scale = float(_attr(node, "scale", 0.0)) or 1.0 / math.sqrt(head)
    qkv = tape.op("MatMul", [x, weights])
    if bias is not None:
        qkv = tape.op("Add", [qkv, bias])
    if opset >= 13:
        q, k, v = tape.op_multi_out("Split", [qkv, _ints(tape, sizes)], attributes={"axis": -1}, num_outputs=3)
    else:
        q, k, v = tape.op_multi_out("Split", [qkv], attributes={"axis": -1, "split": sizes}, num_outputs=3)

    def heads_of(t, size, perm):
        split = tape.op("Reshape", [t, _ints(tape, [0, 0, heads, size // heads])])
        return tape.op("Transpose", [split], attributes={"perm": perm})

    scores = tape.op("MatMul", [heads_of(q, sizes[0], [0, 2, 1, 3]), heads_of(k, sizes[1], [0, 2, 3, 1])])
    scores = tape.op("Mul", [scores, _like(tape, x, scale)])
    if mask_rank in (2, 3):  # raw 0/1 mask over the keys, per batch or per query
        keep = tape.op("Cast", [mask], attributes={"to": x.dtype})
        additive = tape.op("Mul", [tape.op("Sub", [_like(tape, x, 1.0), keep]), _like(tape, x, filter_value)])
        scores = tape.op("Add", [scores, _unsqueeze(tape, additive, [1, 2] if mask_rank == 2 else [1], opset)])
    elif mask_rank == 1:  # keys at or past each sequence's length are masked
        length = tape.op("Gather", [tape.op("Shape", [x]), _ints(tape, [1])])
        count = tape.op("Squeeze", [length]) if opset >= 13 else tape.op("Squeeze", [length], attributes={"axes": [0]})
        positions = tape.op("Range", [_const(tape, 0, np.int64), count, _const(tape, 1, np.int64)])
        ends = tape.op("Cast", [_unsqueeze(tape, mask, [1], opset)], attributes={"to": ir.DataType.INT64})
        masked = tape.op("GreaterOrEqual", [_unsqueeze(tape, positions, [0], opset), ends]) if opset >= 12 else \
            tape.op("Not", [tape.op("Less", [_unsqueeze(tape, positions, [0], opset), ends])])
        additive = tape.op("Where", [masked, _like(tape, x, filter_value), _like(tape, x, 0.0)])
        scores = tape.op("Add", [scores, _unsqueeze(tape, additive, [1, 2], opset)])
    if _attr(node, "unidirectional", 0):
        square = tape.op("Gather", [tape.op("Shape", [scores]), _ints(tape, [2, 3])])
        ones = tape.op("ConstantOfShape", [square], attributes={"value": ir.tensor(np.ones(1, np.float32))})
        if opset < 14:
            return None  # Trilu: opset 14
        future = tape.op("Sub", [ones, tape.op("Trilu", [ones], attributes={"upper": 0})])
        future = tape.op("Cast", [future], attributes={"to": x.dtype})
        scores = tape.op("Add", [scores, tape.op("Mul", [future, _like(tape, x, filter_value)])])
    probs = tape.op("Softmax", [scores], attributes={"axis": -1 if opset >= 13 else 3})
    context = tape.op("MatMul", [probs, heads_of(v, sizes[2], [0, 2, 1, 3])])
    merged = tape.op("Transpose", [context], attributes={"perm": [0, 2, 1, 3]})
    return [tape.op("Reshape", [merged, _ints(tape, [0, 0, sizes[2]])]), None]


def _qgemm(tape, node, opset: int):
    """onnxruntime's QGemm (QOperator-format int8 Gemm): dequantized operands, the int32 bias at
    ``a_scale * b_scale``, quantized again when an output scale is given."""
    a, a_s, a_zp, b, b_s, b_zp, c, y_s, y_zp = (_input(node, i) for i in range(9))
    if _attr(node, "transA", 0) or b.shape is None or len(b.shape) != 2:
        return None
    trans_b = int(_attr(node, "transB", 0))
    per_channel = b_s.shape is not None and len(b_s.shape) == 1 and b_s.shape[0] != 1
    af = tape.op("DequantizeLinear", [a, a_s] + ([a_zp] if a_zp is not None else []))
    if per_channel and opset < 13:  # no per-channel DequantizeLinear yet: spelled out
        def column(t):  # the per-output-channel vector against B's layout
            return _unsqueeze(tape, t, [1], opset) if trans_b else t

        bf = tape.op("Cast", [b], attributes={"to": ir.DataType.FLOAT})
        if b_zp is not None:
            bf = tape.op("Sub", [bf, column(tape.op("Cast", [b_zp], attributes={"to": ir.DataType.FLOAT}))])
        bf = tape.op("Mul", [bf, column(b_s)])
    else:
        b_args = {"axis": 0 if trans_b else 1} if per_channel else {}
        bf = tape.op("DequantizeLinear", [b, b_s] + ([b_zp] if b_zp is not None else []), attributes=b_args)
    y = tape.op("Gemm", [af, bf], attributes={"alpha": float(_attr(node, "alpha", 1.0)), "transB": trans_b})
    if c is not None:
        c_scale = tape.op("Mul", [a_s, b_s])
        y = tape.op("Add", [y, tape.op("Mul", [tape.op("Cast", [c], attributes={"to": ir.DataType.FLOAT}), c_scale])])
    if y_s is None:
        return [y]
    return [tape.op("QuantizeLinear", [y, y_s] + ([y_zp] if y_zp is not None else []))]


def _dq(tape, x, scale, zero_point):
    return tape.op("DequantizeLinear", [x, scale, zero_point])


def _q(tape, y, scale, zero_point):
    return tape.op("QuantizeLinear", [y, scale, zero_point])


def _qlinear_binary(op_type: str):
    def expand(tape, node, _opset: int):
        a, a_s, a_zp, b, b_s, b_zp, c_s, c_zp = (_input(node, i) for i in range(8))
        if a_zp is None or b_zp is None or c_zp is None:
            return None
        return [_q(tape, tape.op(op_type, [_dq(tape, a, a_s, a_zp), _dq(tape, b, b_s, b_zp)]), c_s, c_zp)]
    return expand


def _qlinear_unary(op_type: str, attributes: Callable[[ir.Node], dict] = lambda node: {}):
    def expand(tape, node, _opset: int):
        x, x_s, x_zp, y_s, y_zp = (_input(node, i) for i in range(5))
        if x_zp is None or y_zp is None or _attr(node, "channels_last", 0):
            return None
        return [_q(tape, tape.op(op_type, [_dq(tape, x, x_s, x_zp)], attributes=attributes(node)), y_s, y_zp)]
    return expand


def _qlinear_concat(tape, node, _opset: int):
    y_s, y_zp, *rest = node.inputs
    if len(rest) % 3 or y_zp is None or any(v is None for v in rest):
        return None
    parts = [_dq(tape, rest[i], rest[i + 1], rest[i + 2]) for i in range(0, len(rest), 3)]
    return [_q(tape, tape.op("Concat", parts, attributes={"axis": int(_attr(node, "axis"))}), y_s, y_zp)]


def _constant(value: ir.Value | None) -> np.ndarray | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return None if tensor is None else tensor.numpy()


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """The ``bits``-wide fields of each byte along the last axis, lowest bits first (how
    onnxruntime packs MatMulNBits / GatherBlockQuantized weights and zero points)."""
    packed = np.asarray(packed, np.uint8)
    fields = (packed[..., None] >> np.arange(0, 8, bits, dtype=np.uint8)) & np.uint8((1 << bits) - 1)
    return fields.reshape(*packed.shape[:-1], packed.shape[-1] * (8 // bits))


def _dequantize_blocks(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | float, axis: int,
                       block: int) -> np.ndarray:
    """``(q - zero) * scale`` with one scale/zero per ``block`` elements along ``axis``."""
    length = q.shape[axis]

    def spread(t):
        return np.take(np.repeat(np.asarray(t, np.float32), block, axis=axis), np.arange(length), axis=axis)

    zero = spread(zero) if np.ndim(zero) else np.float32(zero)
    return (q.astype(np.float32) - zero) * spread(scale)


def _matmul_nbits(tape, node, _opset: int):
    """onnxruntime's MatMulNBits (2/4/8-bit block-quantized weights, the LLM ``q4`` exports):
    the weight is a constant, so it is dequantized here once and the node becomes a MatMul."""
    a, b, scales, zero_points, g_idx, bias = (_input(node, i) for i in range(6))
    k, n, bits, block = (int(_attr(node, name, default)) for name, default in
                         (("K", 0), ("N", 0), ("bits", 4), ("block_size", 0)))
    packed, scale = _constant(b), _constant(scales)
    # g_idx (GPTQ's act-order) is left to onnxruntime: its CPU kernel's reading of it is not
    # the plain per-row block index (measured against it)
    if (g_idx is not None or bits not in (2, 4, 8) or min(k, n, block) <= 0
            or packed is None or scale is None):
        return None
    blocks = -(-k // block)
    if packed.size != n * blocks * (block * bits // 8) or scale.size != n * blocks:
        return None
    q = _unpack(packed.reshape(n, blocks, -1), bits)[:, :, :block].reshape(n, blocks * block)[:, :k]
    scale = scale.reshape(n, blocks)
    if zero_points is None:
        zero = np.full((n, blocks), 1 << (bits - 1), np.float32)
    else:
        zero = _constant(zero_points)
        if zero is None:
            return None
        if zero.dtype == np.uint8:  # packed like the weight, each column's run padded to a byte
            zero = _unpack(zero.reshape(n, -1), bits)[:, :blocks]
        zero = zero.reshape(n, blocks)
    weight = _dequantize_blocks(q, scale, zero, 1, block)
    weight = _const(tape, weight.T, scale.dtype)
    y = tape.op("MatMul", [a, weight])
    return [tape.op("Add", [y, bias]) if bias is not None else y]


def _gather_block_quantized(tape, node, _opset: int):
    """onnxruntime's GatherBlockQuantized (the embedding table of ``q4`` LLM exports): the table
    is a constant, dequantized here once; the node becomes a Gather."""
    data, indices, scales, zero_points = (_input(node, i) for i in range(4))
    bits, block = int(_attr(node, "bits", 4)), int(_attr(node, "block_size", 128))
    gather_axis, quantize_axis = int(_attr(node, "gather_axis", 0)), int(_attr(node, "quantize_axis", 1))
    q, scale = _constant(data), _constant(scales)
    if q is None or scale is None or bits not in (4, 8) or block <= 0:
        return None
    quantize_axis %= q.ndim
    zero = _constant(zero_points) if zero_points is not None else None
    if zero_points is not None and zero is None:
        return None
    if q.dtype == np.uint8:  # bits packed along the last axis; no zero point means the middle
        if bits == 4:
            if quantize_axis != q.ndim - 1:
                return None
            q = _unpack(q, 4)
            zero = _unpack(zero, 4) if zero is not None else None
        zero = zero if zero is not None else np.float32(1 << (bits - 1))
    else:  # int4 / uint4 tensors: one value per element
        q = q.astype(np.int16)
        zero = zero.astype(np.int16) if zero is not None else np.float32(0)
    if np.ndim(zero):
        zero = zero.reshape(scale.shape) if zero.size == scale.size else zero[..., :scale.shape[-1]]
    table = _dequantize_blocks(q, scale, zero, quantize_axis, block)
    return [tape.op("Gather", [_const(tape, table, scale.dtype), indices], attributes={"axis": gather_axis})]


def _pool_attributes(node: ir.Node) -> dict:
    return {k: a for k, a in node.attributes.items() if k != "channels_last"}


# op type -> expand(tape, node, opset): the replacement outputs, or None to leave the node as it is
EXPANSIONS: dict[str, Callable] = {
    "FusedConv": _fused_conv,
    "FusedMatMul": _fused_matmul,
    "Gelu": _gelu,
    "BiasGelu": _bias_gelu,
    "FastGelu": _fast_gelu,
    "QuickGelu": _quick_gelu,
    "BiasAdd": _bias_add,
    "SkipLayerNormalization": _skip_layer_norm,
    "SkipSimplifiedLayerNormalization": lambda tape, node, opset: _skip_layer_norm(tape, node, opset, True),
    "EmbedLayerNormalization": _embed_layer_norm,
    "Attention": _attention,
    "QGemm": _qgemm,
    "MatMulNBits": _matmul_nbits,
    "GatherBlockQuantized": _gather_block_quantized,
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
                   "(Skip)(Simplified)LayerNormalization, EmbedLayerNormalization, Attention, QGemm and "
                   "QLinearAdd/Mul/Sigmoid/LeakyRelu/Concat/(Global)AveragePool as standard ONNX ops")

    def call(self, model: ir.Model) -> PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        rewrites = 0
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if node.domain == MS:
                expand = EXPANSIONS.get(node.op_type)
            elif node.domain in ("", "ai.onnx") and node.op_type == "SimplifiedLayerNormalization":
                expand = _simplified_layer_norm  # onnxruntime's, registered in the ONNX domain
            else:
                expand = None
            if expand is None or node.graph is None:
                continue
            tape = ir.tape.Tape()
            outs = expand(tape, node, opset)
            if outs is None:
                continue
            outs = (list(outs) + [None] * len(node.outputs))[:len(node.outputs)]
            if any(new is None and _used(old) for old, new in zip(node.outputs, outs)):
                continue
            pairs = [(v, new) for v, new in zip(node.outputs, outs) if new is not None]
            old, new = [v for v, _ in pairs], [n for _, n in pairs]
            for value, replacement in zip(old, new):
                name, value.name = value.name, None
                replacement.name = name  # keeps value (and graph output) names
            ir.convenience.replace_nodes_and_values(node.graph, node, [node], tape.nodes, old, new)
            rewrites += 1
        if rewrites and "" not in model.opset_imports and "ai.onnx" not in model.opset_imports:
            model.opset_imports[""] = 17
        return PassResult(model, rewrites > 0, rewrites)
