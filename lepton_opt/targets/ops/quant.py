"""Quantized models on integer kernels.

A QDQ model (onnxruntime's ``quantize_static``, ``lepton-opt quantize``, quantization-aware
training exports) spells an int8 convolution as float ops between DequantizeLinear and
QuantizeLinear nodes::

    x_q -> DequantizeLinear -> Conv (weight: w_q -> DequantizeLinear) -> QuantizeLinear -> y_q

Lowered op by op that would be a float convolution on dequantized tensors. Instead the Conv,
MatMul and Gemm converters look through their DequantizeLinear inputs and, when the data is
int8/uint8 quantized per tensor and the weight is a constant quantized symmetrically (per
channel or per tensor), compute on the integers:

    acc[co] = sum x_u8 * w_q  -  z_u8 * sum(w_q[co])          (int32, exact)
    y[co]   = acc[co] * (s_x * s_w[co]) + bias[co]            (float epilogue)

``x_u8`` is the data as uint8 (int8 data shifted by +128, its zero point ``z_u8`` shifted
alike) because x86's dot-product instruction multiplies unsigned by signed bytes; the
correction term is a per-channel constant folded at build time. Convolution padding is filled
with ``z_u8`` (a real zero) so the correction holds at the borders. The epilogue and the next
layer's QuantizeLinear are elementwise and fuse into the kernel (requantization), and the
DequantizeLinear nodes the path reads through are left unused and removed.

``MatMulInteger`` (dynamic quantization: the data quantized at run time by
``DynamicQuantizeLinear``) takes the same kernel with a run-time zero point.

The kernels are in :mod:`lepton_opt.targets.int8`. Grouped (depthwise) and non-2-D
convolutions compute in int32 on zero-point-corrected integers with TVM's generic convolution.
Anything else (asymmetric weights, per-channel data scales, weights computed at run time)
takes the float path, the ONNX semantics exactly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from tvm import relax
from tvm.ir import expr as ir_expr

from lepton_opt.targets import int8
from lepton_opt.targets.lower import LoweringError, shape_of

logger = logging.getLogger(__name__)
op = relax.op

_INT_TYPES = {ir.DataType.INT8: "int8", ir.DataType.UINT8: "uint8"}


@dataclasses.dataclass
class _Dequantized:
    """A DequantizeLinear input: the integer value and its (constant) parameters."""

    value: ir.Value
    dtype: str  # int8 or uint8
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


def _const(ctx, value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    known = ctx.lowerer.known.get(value)
    if known is not None:
        return None if known.is_symbolic else known.numeric()
    if value.const_value is not None:
        return value.const_value.numpy()
    expr = ctx.lowerer.exprs.get(value)
    if isinstance(expr, ir_expr.Constant):
        return expr.data.numpy()
    return None


def _dequantized(ctx, index: int) -> _Dequantized | None:
    if index >= len(ctx.node.inputs) or ctx.node.inputs[index] is None:
        return None
    node = ctx.node.inputs[index].producer()
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    if node.attributes.get_int("block_size", 0):
        return None
    q = node.inputs[0]
    expr = ctx.lowerer.exprs.get(q)
    dtype = str(expr.ty.dtype) if isinstance(expr, relax.Expr) and isinstance(expr.ty, relax.TensorType) \
        else _INT_TYPES.get(q.dtype)
    dtype = dtype if dtype in ("int8", "uint8") else None
    scale = _const(ctx, node.inputs[1])
    zp = _const(ctx, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(())
    if dtype is None or scale is None or zp is None:
        return None
    return _Dequantized(q, dtype, scale.astype(np.float32), zp.astype(np.int32), node.attributes.get_int("axis", 1))


def _weight_values(ctx, w: _Dequantized) -> np.ndarray | None:
    """The weight's integers: a constant, or a constant float quantized in the graph (QAT export)."""
    values = _const(ctx, w.value)
    if values is not None:
        return values
    node = w.value.producer()
    if node is None or node.op_type != "QuantizeLinear" or node.attributes.get_int("block_size", 0):
        return None
    real = _const(ctx, node.inputs[0])
    scale = _const(ctx, node.inputs[1])
    zp = _const(ctx, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(())
    if real is None or scale is None or zp is None:
        return None
    axis = node.attributes.get_int("axis", 1) % real.ndim
    shape = [1] * real.ndim
    if scale.size > 1:
        shape[axis] = -1
    info = np.iinfo(np.int8 if w.dtype == "int8" else np.uint8)
    q = np.rint(real / scale.reshape(shape)) + zp.reshape(shape if zp.size > 1 else [1] * real.ndim)
    return np.clip(q, info.min, info.max).astype(info.dtype)


def _symmetric_int8(values: np.ndarray, w: _Dequantized) -> np.ndarray | None:
    """The weight as int8 with a zero point of 0 (uint8 with zero point 128 is shifted)."""
    zp = w.zero_point.reshape(-1)
    if w.dtype == "int8" and not zp.any():
        return values.astype(np.int8)
    if w.dtype == "uint8" and (zp == 128).all():
        return (values.astype(np.int16) - 128).astype(np.int8)
    return None


def _per_channel(param: np.ndarray, w: _Dequantized, rank: int, channel_axis: int, channels: int) -> np.ndarray | None:
    """A weight parameter as one value per output channel, or None if quantized along another axis."""
    flat = param.reshape(-1)
    if flat.size == 1:
        return np.full(channels, flat[0], param.dtype)
    if w.axis % rank != channel_axis or flat.size != channels:
        return None
    return flat


def _data(ctx, index: int):
    """The data input as (integer expr, dtype, scale, zero point) if quantized per tensor
    (and at least 2-D)."""
    x = _dequantized(ctx, index)
    if x is None or x.scale.size != 1 or x.zero_point.size != 1 or len(shape_of(ctx.lowerer.expr(x.value))) < 2:
        return None
    return ctx.lowerer.expr(x.value), x.dtype, float(x.scale.reshape(-1)[0]), int(x.zero_point.reshape(-1)[0])


def _weight(ctx, index: int, channel_axis: int):
    """The weight as (int8 values, per-channel scale), or None when the integer path does not apply."""
    w = _dequantized(ctx, index)
    if w is None:
        return None
    values = _weight_values(ctx, w)
    if values is None:
        return None
    values = _symmetric_int8(values, w)
    if values is None:
        logger.info("%s %r: the weight's zero point is not 0; computing in float",
                    ctx.node.op_type, ctx.node.name)
        return None
    channels = values.shape[channel_axis]
    scale = _per_channel(w.scale, w, values.ndim, channel_axis % values.ndim, channels)
    return None if scale is None else (values, scale)


def _as_uint8(ctx, x: relax.Expr, dtype: str, zero_point):
    """Data as uint8 and its zero point: int8 values move up by 128."""
    if dtype == "uint8":
        return x, zero_point
    shifted = op.add(op.astype(x, "int16"), relax.const(128, "int16"))
    return ctx.emit(op.astype(shifted, "uint8")), (zero_point + 128 if isinstance(zero_point, int)
                                                   else op.add(zero_point, relax.const(128, "int32")))


def _minus_zero_point(ctx, x: relax.Expr, zero_point) -> relax.Expr:
    """``int32(x) - zero_point``: integers whose 0 is a real 0."""
    zp = relax.const(np.asarray(zero_point, np.int32)) if isinstance(zero_point, (int, np.ndarray)) else zero_point
    return ctx.emit(op.subtract(op.astype(x, "int32"), zp))


# ----------------------------------------------------------------------------------------
# Exact int32 accumulators: sum (x - zx) * w
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Acc:
    """An exact int32 accumulator in the kernel's layout.

    ``restore`` maps a tensor of that layout to the ONNX layout (NHWC -> NCHW for the packed
    convolution; matmuls need none). Elementwise work done before ``restore`` (the
    rescaling, the bias, a following QuantizeLinear) fuses into the kernel: TVM fuses a
    reduction only with elementwise and broadcast consumers, not across a transpose/reshape.
    """

    expr: relax.Expr
    channel_axis: int
    restore: Callable[[relax.Expr], relax.Expr] | None = None

    def onnx(self, ctx, expr: relax.Expr | None = None) -> relax.Expr:
        expr = self.expr if expr is None else expr
        return ctx.emit(self.restore(expr)) if self.restore is not None else expr


def _dense_acc(ctx, xq: relax.Expr, dtype: str, zx, w_nk: np.ndarray) -> _Acc:
    """``(x - zx) @ w_nk^T`` in int32 for uint8/int8 ``x [..., K]`` and a constant int8 ``w_nk``
    (the packed dot-product kernel; ``zx`` an int or a run-time scalar)."""
    x_u8, z_u8 = _as_uint8(ctx, xq, dtype, zx)
    dims = shape_of(x_u8)
    k, n = int(dims[-1]), w_nk.shape[0]
    kp = int8.pad_to(k, int8.GROUP)
    if kp != k:  # the padded weight is 0 there: any value will do
        x_u8 = ctx.emit(op.nn.pad(x_u8, [0, 0] * (len(dims) - 1) + [0, kp - k]))
    packed = relax.const(int8.pack_dense(w_nk))
    acc = ctx.bb.emit_te(int8.dense_compute, x_u8, packed, primfunc_name_hint="int8_dense")
    colsum = np.zeros(int8.pad_to(n, int8.LANES), np.int64)
    colsum[:n] = w_nk.astype(np.int64).sum(axis=1)
    if isinstance(z_u8, int):
        acc = op.subtract(acc, relax.const((z_u8 * colsum).astype(np.int32)))
    else:
        acc = op.subtract(acc, op.multiply(z_u8, relax.const(colsum.astype(np.int32))))
    acc = ctx.emit(acc)
    if int8.pad_to(n, int8.LANES) != n:
        acc = ctx.emit(op.strided_slice(acc, axes=[len(dims) - 1], begin=[0], end=[n]))
    return _Acc(acc, -1)


def _conv_acc(ctx, xq: relax.Expr, dtype: str, zx, wq, attrs: dict, channel_shift: np.ndarray | None = None) -> _Acc:
    """The int32 convolution of ``x - zx`` with the weight ``wq`` (OIHW), plus
    ``channel_shift[co] * conv(x - zx, ones)`` when given (see :func:`_shifted_uint8_weight`).

    ``wq`` is a constant int8 array or a run-time int32 tensor. 2-D, ungrouped, with a constant
    weight, static spatial dims and a per-tensor zero point (constant, or computed at run time
    by DynamicQuantizeLinear): the packed NHWC dot-product kernel, padded with the zero point.
    Otherwise (grouped, 1-D/3-D, run-time weights): TVM's convolution in int32 on
    zero-point-corrected integers, NCHW.
    """
    from lepton_opt.targets.ops.nn import _CONV, _window

    rank = len(shape_of(xq))
    kernel = list(attrs.get("kernel_shape") or (shape_of(wq) if isinstance(wq, relax.Expr) else wq.shape)[2:])
    strides, pads, dilations = _window(xq, kernel, attrs.get("strides"), attrs.get("pads"), attrs.get("dilations"),
                                       attrs.get("auto_pad", "NOTSET"), "Conv with auto_pad")
    group = attrs.get("group", 1)
    runtime_zx = isinstance(zx, relax.Expr) and len(shape_of(zx)) == 0
    # A run-time zero point is written into the border through a mask of the padded size.
    border_known = not (runtime_zx and any(pads)) or all(isinstance(d, int) for d in shape_of(xq)[2:])
    if (rank != 4 or group != 1 or not (isinstance(zx, int) or runtime_zx) or isinstance(wq, relax.Expr)
            or not border_known):
        fn, layout, kernel_layout = _CONV[rank - 2]
        if isinstance(wq, relax.Expr):
            w32 = wq
        else:
            shift = 0 if channel_shift is None else channel_shift.reshape([-1] + [1] * (wq.ndim - 1))
            w32 = relax.const(wq.astype(np.int32) + shift)
        return _Acc(ctx.emit(fn(_minus_zero_point(ctx, xq, zx), w32, strides=strides,
                                padding=pads, dilation=dilations, groups=group, data_layout=layout,
                                kernel_layout=kernel_layout, out_dtype="int32")), 1)
    channels = wq.shape[0]
    if channel_shift is not None:  # one more output channel, all ones: the window sums of x
        wq = np.concatenate([wq, np.ones((1, *wq.shape[1:]), np.int8)])
    x_u8, z_u8 = _as_uint8(ctx, xq, dtype, zx)
    ci = int(shape_of(xq)[1])
    nhwc = op.permute_dims(x_u8, [0, 2, 3, 1])
    width = [0, 0, pads[0], pads[2], pads[1], pads[3], 0, int8.pad_to(ci, int8.GROUP) - ci]
    if isinstance(z_u8, int):
        padded = ctx.emit(op.nn.pad(nhwc, width, pad_value=float(z_u8)))
    else:
        # A run-time zero point: pad with 0, then add it on the border (a constant 0/1 mask).
        padded = ctx.emit(op.nn.pad(nhwc, width))
        if any(pads):
            hp, wp = (int(d) for d in shape_of(padded)[1:3])
            border = np.ones((1, hp, wp, 1), np.uint8)
            border[:, pads[0]:hp - pads[2], pads[1]:wp - pads[3], :] = 0
            padded = ctx.emit(op.add(padded, op.multiply(op.astype(z_u8, "uint8"), relax.const(border))))
    acc = ctx.bb.emit_te(int8.conv_compute, padded, relax.const(int8.pack_conv(wq)), strides, dilations,
                         primfunc_name_hint="int8_conv")
    total = wq.shape[0]
    colsum = np.zeros(int8.pad_to(total, int8.LANES), np.int64)
    colsum[:total] = wq.astype(np.int64).sum(axis=(1, 2, 3))
    if isinstance(z_u8, int):
        acc = ctx.emit(op.subtract(acc, relax.const((z_u8 * colsum).astype(np.int32))))
    else:
        acc = ctx.emit(op.subtract(acc, op.multiply(z_u8, relax.const(colsum.astype(np.int32)))))
    if channel_shift is not None:
        window_sums = ctx.emit(op.strided_slice(acc, axes=[3], begin=[channels], end=[channels + 1]))
        main = ctx.emit(op.strided_slice(acc, axes=[3], begin=[0], end=[channels]))
        acc = ctx.emit(op.add(main, op.multiply(window_sums, relax.const(channel_shift.astype(np.int32)))))
    elif int8.pad_to(channels, int8.LANES) != channels:
        acc = ctx.emit(op.strided_slice(acc, axes=[3], begin=[0], end=[channels]))
    return _Acc(acc, -1, lambda e: op.permute_dims(e, [0, 3, 1, 2]))


def _real(ctx, acc: _Acc, scale: np.ndarray, bias) -> relax.Expr:
    """``float(acc) * scale (+ bias)`` in the kernel's layout, per channel."""
    rank = len(shape_of(acc.expr))
    shape = [1] * rank
    shape[acc.channel_axis % rank] = -1
    y = op.multiply(op.astype(acc.expr, "float32"), relax.const(scale.astype(np.float32).reshape(shape)))
    if bias is not None:
        y = op.add(y, op.reshape(bias, shape))
    return ctx.emit(y)


def _quantize_consumer(ctx) -> ir.Node | None:
    """The QuantizeLinear that alone reads this node's output, with constant per-tensor
    parameters (its result can be computed here, in the kernel's layout)."""
    out = ctx.node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None
    node, index = uses[0]
    if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx") or index != 0:
        return None
    if node.attributes.get_int("block_size", 0) or node.outputs[0].name == "":
        return None
    scale = _const(ctx, node.inputs[1])
    zp = _const(ctx, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if scale is None or scale.size != 1 or (zp is not None and (zp.size != 1 or zp.dtype not in (np.int8, np.uint8))):
        return None
    if zp is None and node.attributes.get_int("output_dtype", 0) not in (0, ir.DataType.UINT8.value):
        return None
    return node


def _finish(ctx, acc: _Acc, scale: np.ndarray, bias=None) -> relax.Expr:
    """The float result in the ONNX layout; a QuantizeLinear reading it alone is computed too,
    before the layout is restored, so the kernel writes the quantized tensor."""
    real = _real(ctx, acc, scale, bias)
    q = _quantize_consumer(ctx) if acc.restore is not None else None
    if q is not None:
        zp = _const(ctx, q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] is not None else np.zeros((), np.uint8)
        scale_q = _const(ctx, q.inputs[1]).astype(np.float32).reshape(())
        quantized = ctx.emit(op.quantize(real, relax.const(scale_q), relax.const(zp.reshape(())), axis=-1,
                                         out_dtype=str(zp.dtype)))
        value = q.outputs[0]
        ctx.lowerer.exprs[value] = ctx.emit(acc.restore(quantized), ctx.lowerer.unique_name(value.name, "v"))
    return acc.onnx(ctx, real)


# ----------------------------------------------------------------------------------------
# QDQ converters (each returns None when the integer path does not apply)
# ----------------------------------------------------------------------------------------

def conv(ctx, x, w, b=None, **attrs):
    data = _data(ctx, 0)
    weight = _weight(ctx, 1, 0) if data is not None else None
    if weight is None:
        return None
    xq, dtype, sx, zx = data
    wq, sw = weight
    return _finish(ctx, _conv_acc(ctx, xq, dtype, zx, wq, attrs), sx * sw, b)


def matmul(ctx, a, b):
    data = _data(ctx, 0)
    weight = _weight(ctx, 1, -1) if data is not None else None
    if weight is None or weight[0].ndim != 2:
        return None
    xq, dtype, sx, zx = data
    wq, sw = weight
    return _finish(ctx, _dense_acc(ctx, xq, dtype, zx, wq.T), sx * sw)


def gemm(ctx, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=0):
    if transA:
        return None
    data = _data(ctx, 0)
    weight = _weight(ctx, 1, 0 if transB else 1) if data is not None else None
    if weight is None:
        return None
    xq, dtype, sx, zx = data
    wq, sw = weight
    acc = _dense_acc(ctx, xq, dtype, zx, wq if transB else wq.T)
    y = _real(ctx, acc, alpha * sx * sw, None)
    if c is not None and beta != 0.0:
        y = op.add(y, c if beta == 1.0 else op.multiply(c, relax.const(beta, "float32")))
    return y


# ----------------------------------------------------------------------------------------
# Integer-op converters: MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv
# ----------------------------------------------------------------------------------------

def _zero_point(ctx, index: int, expr):
    """A zero-point input: an int (or per-channel array) when constant, else the expression."""
    if expr is None:
        return 0
    value = _const(ctx, ctx.node.inputs[index])
    if value is None:
        return ctx.emit(op.astype(expr, "int32"))
    return int(value.reshape(-1)[0]) if value.size == 1 else value.astype(np.int32)


def _scale(ctx, index: int, expr) -> relax.Expr:
    value = _const(ctx, ctx.node.inputs[index])
    return relax.const(value.astype(np.float32)) if value is not None else ctx.emit(op.astype(expr, "float32"))


def _check_integer(x: relax.Expr, what: str) -> str:
    dtype = str(x.ty.dtype)
    if dtype not in ("int8", "uint8"):
        raise LoweringError(f"{what} is {dtype}; int8 or uint8 expected")
    return dtype


def _int_weight(ctx, index: int, w_zp) -> np.ndarray | None:
    """A constant weight minus its zero point, as int8 (None when not constant or out of range)."""
    values = _const(ctx, ctx.node.inputs[index])
    if values is None or not isinstance(w_zp, (int, np.ndarray)):
        return None
    zp = np.asarray(w_zp, np.int32)
    if zp.ndim == 1 and values.ndim == 2:
        zp = zp.reshape(1, -1)  # per column of a [K, N] matmul weight
    elif zp.ndim == 1:
        zp = zp.reshape([-1] + [1] * (values.ndim - 1))  # per output channel of a convolution
    centered = values.astype(np.int32) - zp
    if centered.min(initial=0) < -128 or centered.max(initial=0) > 127:
        return None
    return centered.astype(np.int8)


def _matmul_acc(ctx, a, dtype, a_zp, b, b_zp, weight: np.ndarray | None) -> relax.Expr:
    if weight is not None and weight.ndim == 2:
        acc = _dense_acc(ctx, a, dtype, a_zp, weight.T)
        return acc.onnx(ctx)
    return ctx.emit(op.matmul(_minus_zero_point(ctx, a, a_zp), _minus_zero_point(ctx, b, b_zp), out_dtype="int32"))


def _shifted_uint8_weight(ctx, index: int, w_zp, channel_axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A constant uint8 weight whose centered values do not fit int8 (onnxruntime's older
    ``quantize_dynamic`` made asymmetric uint8 weights: zero point 130 leaves -130..125):
    ``w - zp = (w - 128) + (128 - zp)``, the first term int8 for the integer kernels, the second
    a constant per output channel ``c`` (int32) that adds ``c * sum(x - zx)`` over the row (a
    matmul) or the window (a convolution). Exact."""
    values = _const(ctx, ctx.node.inputs[index])
    if values is None or values.dtype != np.uint8 or not isinstance(w_zp, (int, np.ndarray)):
        return None
    channels = values.shape[channel_axis]
    zp = np.asarray(w_zp, np.int32).reshape(-1)
    if zp.size not in (1, channels):
        return None
    return (values.astype(np.int32) - 128).astype(np.int8), (128 - np.broadcast_to(zp, (channels,))).astype(np.int32)


def matmul_integer(ctx, a, b, a_zero_point=None, b_zero_point=None):
    dtype = _check_integer(a, "MatMulInteger input A")
    _check_integer(b, "MatMulInteger input B")
    a_zp, b_zp = _zero_point(ctx, 2, a_zero_point), _zero_point(ctx, 3, b_zero_point)
    if isinstance(a_zp, np.ndarray):
        # Per-row zero points of A (allowed by the spec): subtract before the generic matmul.
        a_zp = relax.const(a_zp.reshape(-1, 1))
    weight = _int_weight(ctx, 1, b_zp)
    shifted = _shifted_uint8_weight(ctx, 1, b_zp, channel_axis=1) if weight is None and len(shape_of(b)) == 2 else None
    if shifted is None:
        return _matmul_acc(ctx, a, dtype, a_zp, b, b_zp, weight)
    weight, column_shift = shifted
    acc = ctx.emit(_dense_acc(ctx, a, dtype, a_zp, weight.T).onnx(ctx))
    rows = ctx.emit(op.sum(_minus_zero_point(ctx, a, a_zp), axis=-1, keepdims=True))
    return op.add(acc, op.multiply(rows, relax.const(column_shift)))  # column_shift: [N]


def qlinear_matmul(ctx, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    dtype = _check_integer(a, "QLinearMatMul input a")
    _check_integer(b, "QLinearMatMul input b")
    a_zp, b_zp = _zero_point(ctx, 2, a_zero_point), _zero_point(ctx, 5, b_zero_point)
    acc = _matmul_acc(ctx, a, dtype, a_zp, b, b_zp, _int_weight(ctx, 3, b_zp))
    real = op.multiply(op.astype(acc, "float32"), op.multiply(_scale(ctx, 1, a_scale), _scale(ctx, 4, b_scale)))
    return _requantize(ctx, real, 6, y_scale, y_zero_point)


def _requantize(ctx, real: relax.Expr, index: int, y_scale, y_zero_point) -> relax.Expr:
    out_dtype = str(y_zero_point.ty.dtype) if y_zero_point is not None else "uint8"
    zp = y_zero_point if y_zero_point is not None else relax.const(0, out_dtype)
    return op.quantize(ctx.emit(real), _scale(ctx, index, y_scale), zp, axis=-1, out_dtype=out_dtype)


def _conv_operand(ctx, index: int, w, w_zp):
    """A convolution weight and its per-channel shift: centered int8 values when constant (with
    the shift of :func:`_shifted_uint8_weight` when they do not fit int8), else the run-time
    tensor minus its zero point (int32, for the generic convolution)."""
    weight = _int_weight(ctx, index, w_zp)
    if weight is not None:
        return weight, None
    shifted = _shifted_uint8_weight(ctx, index, w_zp, channel_axis=0)
    if shifted is not None:
        return shifted
    per_channel = [-1] + [1] * (len(shape_of(w)) - 1)  # a zero point per output channel
    if isinstance(w_zp, np.ndarray):
        w_zp = w_zp.reshape(per_channel)
    elif isinstance(w_zp, relax.Expr) and len(shape_of(w_zp)) == 1:
        w_zp = op.reshape(w_zp, per_channel)
    return _minus_zero_point(ctx, w, w_zp), None


def conv_integer(ctx, x, w, x_zero_point=None, w_zero_point=None, **attrs):
    dtype = _check_integer(x, "ConvInteger input x")
    x_zp, w_zp = _zero_point(ctx, 2, x_zero_point), _zero_point(ctx, 3, w_zero_point)
    weight, shift = _conv_operand(ctx, 1, w, w_zp)
    return _conv_acc(ctx, x, dtype, x_zp, weight, attrs, shift).onnx(ctx)


def qlinear_conv(ctx, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None, **attrs):
    dtype = _check_integer(x, "QLinearConv input x")
    x_zp, w_zp = _zero_point(ctx, 2, x_zero_point), _zero_point(ctx, 5, w_zero_point)
    weight, shift = _conv_operand(ctx, 3, w, w_zp)
    acc = _conv_acc(ctx, x, dtype, x_zp, weight, attrs, shift).onnx(ctx)
    shape = [1, -1] + [1] * (len(shape_of(acc)) - 2)
    if B is not None:
        acc = ctx.emit(op.add(acc, op.reshape(B, shape)))
    scale = ctx.emit(op.multiply(_scale(ctx, 1, x_scale), op.reshape(_scale(ctx, 4, w_scale), [-1])))
    real = op.multiply(op.astype(acc, "float32"), op.reshape(scale, shape))
    return _requantize(ctx, real, 6, y_scale, y_zero_point)


def integer_first(float_converter, integer_converter):
    """A converter that takes the integer path where it applies, else ``float_converter``."""

    def convert(ctx, *inputs, **attrs):
        result = integer_converter(ctx, *inputs, **attrs)
        return float_converter(ctx, *inputs, **attrs) if result is None else result

    return convert


CONVERTERS = {"MatMulInteger": matmul_integer, "ConvInteger": conv_integer,
              "QLinearMatMul": qlinear_matmul, "QLinearConv": qlinear_conv}
