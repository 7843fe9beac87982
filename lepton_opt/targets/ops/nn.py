"""Neural-network converters: convolution, pooling, normalization, softmax, Gemm/MatMul."""

from __future__ import annotations

import math

import numpy as np
from tvm import relax
from tvm import tirx as tir
from tvm.ir.prim import expr as prim

from lepton_opt.targets.lower import LoweringError, dtype_of, shape_of
from lepton_opt.targets.ops.elementwise import scalar

op = relax.op

_CONV = {1: (op.nn.conv1d, "NCW", "OIW"), 2: (op.nn.conv2d, "NCHW", "OIHW"), 3: (op.nn.conv3d, "NCDHW", "OIDHW")}
_CONV_T = {1: (op.nn.conv1d_transpose, "NCW", "IOW"), 2: (op.nn.conv2d_transpose, "NCHW", "IOHW")}


def _static_spatial(x: relax.Expr, what: str) -> list[int]:
    dims = shape_of(x)[2:]
    if not all(isinstance(d, int) for d in dims):
        raise LoweringError(f"{what} needs static spatial dimensions; give static input shapes")
    return dims


def _auto_pads(auto_pad: str, in_dims, kernel, strides, dilations) -> list[int]:
    """Explicit [begins..., ends...] pads for SAME_UPPER / SAME_LOWER / VALID."""
    n = len(kernel)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    begins, ends = [], []
    for size, k, s, d in zip(in_dims, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _window(x, kernel_shape, strides, pads, dilations, auto_pad, what):
    n = len(kernel_shape)
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    if auto_pad not in ("NOTSET", "", None):
        pads = _auto_pads(auto_pad, _static_spatial(x, what), kernel_shape, strides, dilations)
    pads = list(pads or [0] * (2 * n))
    return strides, pads, dilations


def _channel_bias(b: relax.Expr, rank: int) -> relax.Expr:
    return op.reshape(b, [1, -1] + [1] * (rank - 2))


def Conv(ctx, x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
         pads=None, strides=None):
    rank = len(shape_of(x))
    n = rank - 2
    if n not in _CONV:
        raise LoweringError(f"Conv with {n} spatial dimensions is not supported (1-3 are)")
    kernel = kernel_shape or shape_of(w)[2:]
    strides, pads, dilations = _window(x, kernel, strides, pads, dilations, auto_pad, "Conv with auto_pad")
    fn, layout, kernel_layout = _CONV[n]
    out = fn(x, w, strides=strides, padding=pads, dilation=dilations, groups=group,
             data_layout=layout, kernel_layout=kernel_layout)
    if b is not None:
        out = op.add(ctx.emit(out), _channel_bias(b, rank))
    return out


def ConvTranspose(ctx, x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                  output_padding=None, output_shape=None, pads=None, strides=None):
    rank = len(shape_of(x))
    n = rank - 2
    if n not in _CONV_T:
        raise LoweringError(f"ConvTranspose with {n} spatial dimensions is not supported (1-2 are)")
    kernel = list(kernel_shape or shape_of(w)[2:])
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    output_padding = list(output_padding or [0] * n)
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        in_dims = _static_spatial(x, "ConvTranspose with output_shape/auto_pad")
        target = list(output_shape)[-n:] if output_shape is not None else [d * s for d, s in zip(in_dims, strides)]
        begins, ends = [], []
        for i in range(n):
            total = strides[i] * (in_dims[i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1 - target[i]
            if total < 0:  # the requested output is larger: extra rows come from output_padding
                output_padding[i] -= total
                total = 0
            small, large = total // 2, total - total // 2
            # The spec puts the larger half at the start unless auto_pad is SAME_UPPER.
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        pads = begins + ends
    pads = list(pads or [0] * (2 * n))
    fn, layout, kernel_layout = _CONV_T[n]
    out = fn(x, w, strides=strides, padding=pads, output_padding=output_padding, dilation=dilations,
             groups=group, data_layout=layout, kernel_layout=kernel_layout)
    if b is not None:
        out = op.add(ctx.emit(out), _channel_bias(b, rank))
    return out


_POOL = {
    "max": {1: op.nn.max_pool1d, 2: op.nn.max_pool2d, 3: op.nn.max_pool3d},
    "avg": {1: op.nn.avg_pool1d, 2: op.nn.avg_pool2d, 3: op.nn.avg_pool3d},
}
_LAYOUT = {1: "NCW", 2: "NCHW", 3: "NCDHW"}


def _pool(kind, ctx, x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides, count_include_pad=0):
    n = len(kernel_shape)
    strides, pads, dilations = _window(x, kernel_shape, strides, pads, dilations, auto_pad, "pooling with auto_pad")
    fn = _POOL[kind].get(n)
    if fn is None:
        raise LoweringError(f"pooling over {n} spatial dimensions is not supported")
    return fn(x, pool_size=list(kernel_shape), strides=strides, padding=pads, dilation=dilations,
              ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad), layout=_LAYOUT[n])


def MaxPool(ctx, x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape, pads=None,
            storage_order=0, strides=None):
    if len(ctx.node.outputs) > 1 and ctx.node.outputs[1].uses():
        raise LoweringError("MaxPool's Indices output is not supported")
    return _pool("max", ctx, x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)


def AveragePool(ctx, x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                kernel_shape, pads=None, strides=None):
    return _pool("avg", ctx, x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides, count_include_pad)


def GlobalAveragePool(ctx, x):
    return op.mean(x, axis=list(range(2, len(shape_of(x)))), keepdims=True)


def GlobalMaxPool(ctx, x):
    return op.max(x, axis=list(range(2, len(shape_of(x)))), keepdims=True)


def BatchNormalization(ctx, x, scale, bias, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0,
                       spatial=1, is_test=1, consumed_inputs=None):
    if training_mode:
        raise LoweringError("BatchNormalization in training mode is not supported; export in eval mode")
    rank = len(shape_of(x))
    params = [ctx.known(i) for i in range(1, 5)]
    if all(p is not None and not p.is_symbolic for p in params):
        # Inference BN is an affine map per channel: fold it to y = x * a + b at compile time.
        s, b, m, v = (p.numeric().astype(np.float64) for p in params)
        a = s / np.sqrt(v + epsilon)
        shift = b - m * a
        dtype = dtype_of(x)
        return op.add(op.multiply(x, _channel_bias(relax.const(a.astype(dtype), dtype), rank)),
                      _channel_bias(relax.const(shift.astype(dtype), dtype), rank))
    inv = op.divide(scale, op.sqrt(op.add(var, scalar(var, epsilon))))
    out = op.multiply(op.subtract(x, _channel_bias(mean, rank)), _channel_bias(inv, rank))
    return op.add(out, _channel_bias(bias, rank))


def InstanceNormalization(ctx, x, scale, bias, *, epsilon=1e-5):
    rank = len(shape_of(x))
    return op.nn.instance_norm(x, scale, bias, channel_axis=1, axes=list(range(2, rank)), epsilon=epsilon)


def _broadcast_param(p, normalized_shape):
    if p is None:
        return None
    if shape_of(p) != list(normalized_shape):
        return op.broadcast_to(p, normalized_shape)
    return p


def LayerNormalization(ctx, x, scale, bias=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    for i in (1, 2):
        if len(ctx.node.outputs) > i and ctx.node.outputs[i].uses():
            raise LoweringError("LayerNormalization's Mean / InvStdDev outputs are not supported")
    dims = shape_of(x)
    axis = axis + len(dims) if axis < 0 else axis
    axes = list(range(axis, len(dims)))
    normalized = dims[axis:]
    gamma = _broadcast_param(scale, normalized)
    beta = _broadcast_param(bias, normalized)
    if beta is None:
        beta = op.zeros(normalized, dtype_of(x))
    return [op.nn.layer_norm(x, gamma, beta, axes=axes, epsilon=epsilon)]


def RMSNormalization(ctx, x, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    dims = shape_of(x)
    axis = axis + len(dims) if axis < 0 else axis
    return op.nn.rms_norm(x, _broadcast_param(scale, dims[axis:]), axes=list(range(axis, len(dims))),
                          epsilon=epsilon)


def GroupNormalization(ctx, x, scale, bias, *, epsilon=1e-5, num_groups, stash_type=1):
    dims = shape_of(x)
    channels = dims[1]
    if ctx.opset < 21 and shape_of(scale)[0] != channels:
        # opset 18: one scale per group; Relax wants one per channel.
        per_group = channels // num_groups
        scale = op.reshape(op.broadcast_to(op.reshape(scale, [num_groups, 1]), [num_groups, per_group]), [channels])
        bias = op.reshape(op.broadcast_to(op.reshape(bias, [num_groups, 1]), [num_groups, per_group]), [channels])
    return op.nn.group_norm(x, scale, bias, num_groups=num_groups, channel_axis=1,
                            axes=list(range(2, len(dims))), epsilon=epsilon)


def _coerced_2d(fn, ctx, x, axis):
    """Softmax-family semantics before opset 13: flatten to 2-D at ``axis``, apply, restore."""
    dims = shape_of(x)
    axis = axis + len(dims) if axis < 0 else axis
    if axis == len(dims) - 1:
        return fn(x, axis=-1)
    outer = 1
    for d in dims[:axis]:
        outer = outer * d
    flat = ctx.emit(op.reshape(x, [outer, -1]))
    return op.reshape(ctx.emit(fn(flat, axis=-1)), dims)


def Softmax(ctx, x, *, axis=None):
    if ctx.opset < 13:
        return _coerced_2d(op.nn.softmax, ctx, x, 1 if axis is None else axis)
    return op.nn.softmax(x, axis=-1 if axis is None else axis)


def LogSoftmax(ctx, x, *, axis=None):
    if ctx.opset < 13:
        return _coerced_2d(op.nn.log_softmax, ctx, x, 1 if axis is None else axis)
    return op.nn.log_softmax(x, axis=-1 if axis is None else axis)


def Hardmax(ctx, x, *, axis=None):
    def hardmax(t, axis):
        depth = shape_of(t)[axis]
        return op.one_hot(op.argmax(t, axis=axis), relax.prim_value(tir.const(1, dtype_of(t))),
                          relax.prim_value(tir.const(0, dtype_of(t))), depth, axis=axis)

    if ctx.opset < 13:
        return _coerced_2d(hardmax, ctx, x, 1 if axis is None else axis)
    return hardmax(x, -1 if axis is None else axis)


def MatMul(ctx, a, b):
    return op.matmul(a, b)


def Gemm(ctx, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    if transA:
        a = op.permute_dims(a, [1, 0])
    if transB:
        b = op.permute_dims(b, [1, 0])
    out = op.matmul(a, b)
    if alpha != 1.0:
        out = op.multiply(ctx.emit(out), scalar(a, alpha))
    if c is not None and beta != 0.0:
        c = c if beta == 1.0 else op.multiply(c, scalar(c, beta))
        out = op.add(ctx.emit(out), c)
    return out


def Flatten(ctx, x, *, axis=1):
    dims = shape_of(x)
    axis = axis + len(dims) if axis < 0 else axis
    outer, inner = 1, 1
    for d in dims[:axis]:
        outer = outer * d
    for d in dims[axis:]:
        inner = inner * d
    return op.reshape(x, [outer, inner])


def Dropout(ctx, x, ratio_in=None, training_in=None, **attrs):
    training = ctx.known(2)
    if training is not None and not training.is_symbolic and bool(training.numeric().reshape(-1)[0]):
        raise LoweringError("Dropout with training_mode=True is not supported; export in eval mode")
    outputs = [x]
    if len(ctx.node.outputs) > 1:
        outputs.append(op.ones(shape_of(x), "bool"))
    return outputs


def DepthToSpace(ctx, x, *, blocksize, mode="DCR"):
    n, c, h, w = shape_of(x)
    b = blocksize
    if mode == "DCR":
        t = op.reshape(x, [n, b, b, c // (b * b), h, w])
        t = op.permute_dims(ctx.emit(t), [0, 3, 4, 1, 5, 2])
    else:
        t = op.reshape(x, [n, c // (b * b), b, b, h, w])
        t = op.permute_dims(ctx.emit(t), [0, 1, 4, 2, 5, 3])
    return op.reshape(ctx.emit(t), [n, c // (b * b), h * b, w * b])


def SpaceToDepth(ctx, x, *, blocksize):
    n, c, h, w = shape_of(x)
    b = blocksize
    t = op.reshape(x, [n, c, h // b, b, w // b, b])
    t = op.permute_dims(ctx.emit(t), [0, 3, 5, 1, 2, 4])
    return op.reshape(ctx.emit(t), [n, c * b * b, h // b, w // b])


def LpNormalization(ctx, x, *, axis=-1, p=2):
    if p == 1:
        norm = op.sum(op.abs(x), axis=axis, keepdims=True)
    else:
        norm = op.sqrt(op.sum(op.multiply(x, x), axis=axis, keepdims=True))
    return op.divide(x, ctx.emit(norm))


CONVERTERS = {
    "Conv": Conv, "ConvTranspose": ConvTranspose, "MaxPool": MaxPool, "AveragePool": AveragePool,
    "GlobalAveragePool": GlobalAveragePool, "GlobalMaxPool": GlobalMaxPool,
    "BatchNormalization": BatchNormalization, "InstanceNormalization": InstanceNormalization,
    "LayerNormalization": LayerNormalization, "RMSNormalization": RMSNormalization,
    "GroupNormalization": GroupNormalization, "Softmax": Softmax, "LogSoftmax": LogSoftmax,
    "Hardmax": Hardmax, "MatMul": MatMul, "Gemm": Gemm, "Flatten": Flatten, "Dropout": Dropout,
    "DepthToSpace": DepthToSpace, "SpaceToDepth": SpaceToDepth, "LpNormalization": LpNormalization,
}
