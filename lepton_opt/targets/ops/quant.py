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
    """The data input as (integer expr, dtype, scale, zero point) if quantized per tensor."""
    x = _dequantized(ctx, index)
    if x is None or x.scale.size != 1 or x.zero_point.size != 1:
        return None
    return ctx.lowerer.expr(x.value), x.dtype, float(x.scale.reshape(-1)[0]), int(x.zero_point.reshape(-1)[0])


def _weight(ctx, index: int, channel_axis: int, channels_axis_len: int | None = None):
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


def _epilogue(ctx, acc: relax.Expr, correction, scale: np.ndarray, bias) -> relax.Expr:
    """float(acc - correction) * scale (+ bias): the integer sums back to real values."""
    if correction is not None:
        acc = op.subtract(acc, correction)
    y = op.multiply(op.astype(acc, "float32"), relax.const(scale.astype(np.float32)))
    if bias is not None:
        y = op.add(y, bias)
    return ctx.emit(y)


def _dense(ctx, x_u8: relax.Expr, w_nk: np.ndarray) -> relax.Expr:
    """uint8 ``[..., K]`` x int8 ``[N, K]``^T -> int32 ``[..., N]`` on the packed kernel."""
    dims = shape_of(x_u8)
    k, n = int(dims[-1]), w_nk.shape[0]
    rows = ctx.emit(op.reshape(x_u8, [-1, k]))
    kp = int8.pad_to(k, int8.GROUP)
    if kp != k:  # the padded weight is 0 there: any value will do
        rows = ctx.emit(op.nn.pad(rows, [0, 0, 0, kp - k]))
    packed = relax.const(int8.pack_dense(w_nk))
    acc = ctx.bb.emit_te(int8.dense_compute, rows, packed, primfunc_name_hint="int8_dense")
    acc = op.reshape(acc, [-1, int8.pad_to(n, int8.LANES)])
    if int8.pad_to(n, int8.LANES) != n:
        acc = op.strided_slice(acc, axes=[1], begin=[0], end=[n])
    return ctx.emit(op.reshape(acc, [*dims[:-1], n]))


def _bias_vector(b, channels: int) -> relax.Expr | None:
    return None if b is None else op.reshape(b, [channels])


# ----------------------------------------------------------------------------------------
# Converters (each returns None when the integer path does not apply)
# ----------------------------------------------------------------------------------------

def conv(ctx, x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
         pads=None, strides=None):
    data = _data(ctx, 0)
    weight = _weight(ctx, 1, 0) if data is not None else None
    if weight is None:
        return None
    from lepton_opt.targets.ops.nn import _window

    xq, dtype, sx, zx = data
    wq, sw = weight
    rank = len(shape_of(xq))
    kernel = list(kernel_shape or wq.shape[2:])
    strides, pads, dilations = _window(xq, kernel, strides, pads, dilations, auto_pad, "Conv with auto_pad")
    channels = wq.shape[0]
    scale = sx * sw
    if rank != 4 or group != 1:
        return _conv_int32(ctx, xq, zx, wq, scale, b, strides, pads, dilations, group)
    x_u8, z_u8 = _as_uint8(ctx, xq, dtype, zx)
    ci = int(shape_of(xq)[1])
    nhwc = op.permute_dims(x_u8, [0, 2, 3, 1])
    padded = ctx.emit(op.nn.pad(nhwc, [0, 0, pads[0], pads[2], pads[1], pads[3], 0, int8.pad_to(ci, int8.GROUP) - ci],
                                pad_value=float(z_u8)))
    acc = ctx.bb.emit_te(int8.conv_compute, padded, relax.const(int8.pack_conv(wq)), strides, dilations,
                         primfunc_name_hint="int8_conv")
    n_, oh, ow = (int(d) for d in shape_of(acc)[:3])
    acc = op.reshape(acc, [n_, oh, ow, int8.pad_to(channels, int8.LANES)])
    if int8.pad_to(channels, int8.LANES) != channels:
        acc = op.strided_slice(acc, axes=[3], begin=[0], end=[channels])
    correction = relax.const((z_u8 * wq.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32))
    y = _epilogue(ctx, acc, correction, scale, _bias_vector(b, channels))
    return op.permute_dims(y, [0, 3, 1, 2])


def _conv_int32(ctx, xq, zx, wq, scale, b, strides, pads, dilations, group):
    """Grouped and 1-D/3-D convolutions: int32 arithmetic on zero-point-corrected integers."""
    from lepton_opt.targets.ops.nn import _CONV

    rank = len(shape_of(xq))
    fn, layout, kernel_layout = _CONV[rank - 2]
    x32 = ctx.emit(op.subtract(op.astype(xq, "int32"), relax.const(zx, "int32")))
    acc = ctx.emit(fn(x32, relax.const(wq.astype(np.int32)), strides=strides, padding=pads, dilation=dilations,
                      groups=group, data_layout=layout, kernel_layout=kernel_layout, out_dtype="int32"))
    shape = [1, -1] + [1] * (rank - 2)
    y = op.multiply(op.astype(acc, "float32"), relax.const(scale.astype(np.float32).reshape(shape)))
    if b is not None:
        y = op.add(y, op.reshape(b, shape))
    return y


def matmul(ctx, a, b):
    data = _data(ctx, 0)
    weight = _weight(ctx, 1, -1) if data is not None else None
    if weight is None or weight[0].ndim != 2:
        return None
    xq, dtype, sx, zx = data
    wq, sw = weight
    return _dense_epilogue(ctx, xq, dtype, zx, wq.T, sx * sw, None)


def gemm(ctx, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=0):
    if transA:
        return None
    data = _data(ctx, 0)
    weight = _weight(ctx, 1, 0 if transB else 1) if data is not None else None
    if weight is None:
        return None
    xq, dtype, sx, zx = data
    wq, sw = weight
    w_nk = wq if transB else wq.T
    bias = None
    if c is not None and beta != 0.0:
        bias = c if beta == 1.0 else op.multiply(c, relax.const(beta, "float32"))
    return _dense_epilogue(ctx, xq, dtype, zx, w_nk, alpha * sx * sw, bias)


def _dense_epilogue(ctx, xq, dtype, zx, w_nk, scale, bias):
    x_u8, z_u8 = _as_uint8(ctx, xq, dtype, zx)
    acc = _dense(ctx, x_u8, w_nk)
    correction = relax.const((z_u8 * w_nk.astype(np.int64).sum(axis=1)).astype(np.int32))
    return _epilogue(ctx, acc, correction, scale, bias)


def matmul_integer(ctx, a, b, a_zero_point=None, b_zero_point=None):
    """MatMulInteger with a constant int8 weight: the packed kernel, int32 out (exact)."""
    wq = _const(ctx, ctx.node.inputs[1])
    if wq is None or wq.ndim != 2 or a is None:
        return None
    b_zp = _const(ctx, ctx.node.inputs[3]) if b_zero_point is not None else np.zeros((), wq.dtype)
    if b_zp is None:
        return None
    w = _Dequantized(ctx.node.inputs[1], str(wq.dtype), np.ones(1, np.float32), b_zp.astype(np.int32), 1)
    w_int8 = _symmetric_int8(wq, w)
    if w_int8 is None:
        return None
    a_dtype = str(a.ty.dtype)
    if a_dtype not in ("int8", "uint8"):
        raise LoweringError(f"MatMulInteger input A is {a_dtype}; int8 or uint8 expected")
    a_zp = _const(ctx, ctx.node.inputs[2]) if a_zero_point is not None else np.zeros((), np.int32)
    if a_zp is not None:
        if a_zp.size != 1:
            return None
        zp = int(a_zp.reshape(-1)[0])
    else:  # quantized at run time (DynamicQuantizeLinear): a scalar tensor
        zp = op.astype(op.reshape(a_zero_point, []), "int32")
    x_u8, z_u8 = _as_uint8(ctx, a, a_dtype, zp)
    w_nk = w_int8.T
    acc = _dense(ctx, x_u8, w_nk)
    colsum = w_nk.astype(np.int64).sum(axis=1).astype(np.int32)
    if isinstance(z_u8, int):
        return op.subtract(acc, relax.const((z_u8 * colsum.astype(np.int64)).astype(np.int32)))
    return op.subtract(acc, op.multiply(z_u8, relax.const(colsum)))


def integer_first(float_converter, integer_converter):
    """A converter that takes the integer path where it applies, else ``float_converter``."""

    def convert(ctx, *inputs, **attrs):
        result = integer_converter(ctx, *inputs, **attrs)
        return float_converter(ctx, *inputs, **attrs) if result is None else result

    return convert
