"""Neural-network converters: convolution, pooling, normalization, softmax, Gemm/MatMul."""

from __future__ import annotations

import math

import numpy as np
from tvm import relax
from tvm import tirx as tir

from lepton_opt.targets.lower import LoweringError, dtype_of, shape_of
from lepton_opt.targets.ops.elementwise import LOW_FLOATS, in_float32, scalar

op = relax.op

_CONV = {1: (op.nn.conv1d, "NCW", "OIW"), 2: (op.nn.conv2d, "NCHW", "OIHW"), 3: (op.nn.conv3d, "NCDHW", "OIDHW")}
_CONV_T = {1: (op.nn.conv1d_transpose, "NCW", "IOW"), 2: (op.nn.conv2d_transpose, "NCHW", "IOHW"),
           3: (op.nn.conv3d_transpose, "NCDHW", "IODHW")}


def _wide(ctx, x: relax.Expr, make) -> relax.Expr:
    """``make(out_dtype)``: float16/bfloat16 convolutions and matmuls accumulate in float32 and
    round once, after their epilogue (bias, scaling); ``make`` gets the dtype to accumulate in and
    returns the float32 result when ``x`` is low precision."""
    dt = dtype_of(x)
    if dt not in LOW_FLOATS:
        return make(None)
    return op.astype(ctx.emit(make("float32")), dt)


def _as(x: relax.Expr, dtype: str | None) -> relax.Expr:
    return x if dtype is None or dtype_of(x) == dtype else op.astype(x, dtype)


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
    if n == 1 and not _feeds_time_normalization(ctx.node):
        # A 1-D convolution is a 2-D one of height 1: as such it takes the CPU's NHWC tiled
        # kernel, where conv1d has only a generic schedule (an audio front end's STFT conv ran
        # ~50x slower). Constant weights are reshaped at build time.
        x2 = ctx.emit(op.expand_dims(x, [2]))
        w2 = ctx.emit(op.expand_dims(w, [2]))
        out = Conv(ctx, x2, w2, b, dilations=[1, *dilations], group=group, kernel_shape=[1, *kernel],
                   pads=[0, pads[0], 0, pads[1]], strides=[1, *strides])
        return op.squeeze(ctx.emit(out), [2])
    fn, layout, kernel_layout = _CONV[n]

    def make(acc):
        out = fn(x, w, strides=strides, padding=pads, dilation=dilations, groups=group,
                 data_layout=layout, kernel_layout=kernel_layout, out_dtype=acc)
        if b is not None:
            out = op.add(ctx.emit(out), _as(ctx.emit(_channel_bias(b, rank)), acc))
        return out

    return _wide(ctx, x, make)


def _feeds_time_normalization(node) -> bool:
    """Whether the conv's output goes to a per-channel normalization over time (wav2vec2's
    InstanceNormalization): channels-last, as the conv2d form makes it, that op would reduce
    along a strided axis (measured: 732 ms for [1, 512, 3199]); conv1d keeps channels first."""
    return any(use.node.op_type in ("InstanceNormalization", "GroupNormalization")
               for out in node.outputs for use in out.uses())


def ConvTranspose(ctx, x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                  output_padding=None, output_shape=None, pads=None, strides=None):
    rank = len(shape_of(x))
    n = rank - 2
    if n not in _CONV_T:
        raise LoweringError(f"ConvTranspose with {n} spatial dimensions is not supported (1-3 are)")
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

    def make(acc):
        out = fn(x, w, strides=strides, padding=pads, output_padding=output_padding, dilation=dilations,
                 groups=group, data_layout=layout, kernel_layout=kernel_layout, out_dtype=acc)
        if b is not None:
            out = op.add(ctx.emit(out), _as(ctx.emit(_channel_bias(b, rank)), acc))
        return out

    return _wide(ctx, x, make)


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

    def pool(t):
        return fn(t, pool_size=list(kernel_shape), strides=strides, padding=pads, dilation=dilations,
                  ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad), layout=_LAYOUT[n])

    return in_float32(ctx, x, pool) if kind == "avg" else pool(x)


def MaxPool(ctx, x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape, pads=None,
            storage_order=0, strides=None):
    if len(ctx.node.outputs) > 1 and ctx.node.outputs[1].uses():
        raise LoweringError("MaxPool's Indices output is not supported")
    return _pool("max", ctx, x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)


def AveragePool(ctx, x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                kernel_shape, pads=None, strides=None):
    return _pool("avg", ctx, x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides, count_include_pad)


def GlobalAveragePool(ctx, x):
    return in_float32(ctx, x, lambda t: op.mean(t, axis=list(range(2, len(shape_of(x)))), keepdims=True))


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
    inv = ctx.emit(op.divide(scale, op.sqrt(op.add(var, scalar(var, epsilon)))))
    out = ctx.emit(op.multiply(op.subtract(x, _channel_bias(mean, rank)), _channel_bias(inv, rank)))
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
    dims = shape_of(x)
    axis = axis + len(dims) if axis < 0 else axis
    axes = list(range(axis, len(dims)))
    if any(o is not None and o.name and (o.uses() or o.is_graph_output()) for o in ctx.node.outputs[1:]):
        # Mean / InvStdDev wanted too: spell the normalization out (in float32 when stash_type=1).
        dt = dtype_of(x)
        work = "float32" if stash_type == 1 and dt in ("float16", "bfloat16") else dt
        xs = ctx.emit(op.astype(x, work)) if work != dt else x
        mean = ctx.emit(op.mean(xs, axes, keepdims=True))
        centered = ctx.emit(op.subtract(xs, mean))
        var = ctx.emit(op.mean(op.multiply(centered, centered), axes, keepdims=True))
        inv = ctx.emit(op.divide(relax.const(1.0, work), op.sqrt(op.add(var, relax.const(epsilon, work)))))
        y = ctx.emit(op.multiply(centered, inv))
        if work != dt:
            y = ctx.emit(op.astype(y, dt))
        y = ctx.emit(op.multiply(y, scale))
        if bias is not None:
            y = op.add(y, bias)
        return [y, mean, inv]
    normalized = dims[axis:]
    gamma = _broadcast_param(scale, normalized)
    beta = _broadcast_param(bias, normalized)
    if beta is None:
        beta = op.zeros(normalized, dtype_of(x))
    if stash_type == 1 and dtype_of(x) in LOW_FLOATS:  # statistics and scaling in float32
        gamma, beta = ctx.emit(op.astype(gamma, "float32")), ctx.emit(op.astype(beta, "float32"))
        return [in_float32(ctx, x, lambda t: op.nn.layer_norm(t, gamma, beta, axes=axes, epsilon=epsilon))]
    return [op.nn.layer_norm(x, gamma, beta, axes=axes, epsilon=epsilon)]


def RMSNormalization(ctx, x, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    dims = shape_of(x)
    axis = axis + len(dims) if axis < 0 else axis
    dt = dtype_of(x)
    work = "float32" if stash_type == 1 and dt in ("float16", "bfloat16") else dt
    xs = ctx.emit(op.astype(x, work)) if work != dt else x
    ms = ctx.emit(op.mean(op.multiply(xs, xs), list(range(axis, len(dims))), keepdims=True))
    y = ctx.emit(op.divide(xs, op.sqrt(op.add(ms, relax.const(epsilon, work)))))
    if work != dt:
        y = ctx.emit(op.astype(y, dt))
    return op.multiply(y, scale)


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
        return in_float32(ctx, x, lambda t: _coerced_2d(op.nn.softmax, ctx, t, 1 if axis is None else axis))
    return in_float32(ctx, x, lambda t: op.nn.softmax(t, axis=-1 if axis is None else axis))


def LogSoftmax(ctx, x, *, axis=None):
    if ctx.opset < 13:
        return in_float32(ctx, x, lambda t: _coerced_2d(op.nn.log_softmax, ctx, t, 1 if axis is None else axis))
    return in_float32(ctx, x, lambda t: op.nn.log_softmax(t, axis=-1 if axis is None else axis))


def Hardmax(ctx, x, *, axis=None):
    def hardmax(t, axis):
        depth = shape_of(t)[axis]
        return op.one_hot(op.argmax(t, axis=axis), relax.prim_value(tir.const(1, dtype_of(t))),
                          relax.prim_value(tir.const(0, dtype_of(t))), depth, axis=axis)

    if ctx.opset < 13:
        return _coerced_2d(hardmax, ctx, x, 1 if axis is None else axis)
    return hardmax(x, -1 if axis is None else axis)


def MatMul(ctx, a, b):
    return _wide(ctx, a, lambda acc: op.matmul(a, b, out_dtype=acc))


def Gemm(ctx, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=0):
    if transA:
        a = ctx.emit(op.permute_dims(a, [1, 0]))
    if transB:
        b = ctx.emit(op.permute_dims(b, [1, 0]))

    def make(acc):
        out = op.matmul(a, b, out_dtype=acc)
        if alpha != 1.0:
            out = op.multiply(ctx.emit(out), relax.const(alpha, acc or dtype_of(a)))
        if c is not None and beta != 0.0:
            bias = _as(c, acc)
            bias = bias if beta == 1.0 else op.multiply(bias, relax.const(beta, acc or dtype_of(c)))
            out = op.add(ctx.emit(out), bias)
        return out

    return _wide(ctx, a, make)


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
    ratio = ctx.known(1)
    zero_ratio = ratio is not None and not ratio.is_symbolic and float(ratio.numeric().reshape(-1)[0]) == 0.0
    if len(ctx.node.inputs) > 2 and ctx.node.inputs[2] is not None and training is None and not zero_ratio:
        raise LoweringError("Dropout's training_mode is computed at run time; export in eval mode")
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
    norm = ctx.emit(norm)
    # A zero vector stays zero (0 / 0 would be NaN).
    return op.where(op.equal(norm, scalar(x, 0)), scalar(x, 0), op.divide(x, norm))


def Attention(ctx, q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *,
              is_causal=0, kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None,
              softcap=0.0, softmax_precision=None, left_window_size=-1, right_window_size=-1):
    """ONNX Attention (opset 23+): 3-D or 4-D inputs, KV cache, masks, causal / sliding window, GQA."""
    dt = dtype_of(q)
    rank3 = len(shape_of(q)) == 3
    if rank3:
        if q_num_heads is None or kv_num_heads is None:
            raise LoweringError("Attention with 3-D inputs needs q_num_heads and kv_num_heads")

        def heads(t, n):
            b, s_, h = shape_of(t)
            return ctx.emit(op.permute_dims(ctx.emit(op.reshape(t, [b, s_, n, h // n])), [0, 2, 1, 3]))

        q, k, v = heads(q, q_num_heads), heads(k, kv_num_heads), heads(v, kv_num_heads)
    past_len = 0
    if past_key is not None:
        past_len = shape_of(past_key)[2]
        k = ctx.emit(op.concat([past_key, k], axis=2))
        v = ctx.emit(op.concat([past_value, v], axis=2))
    present_k, present_v = k, v
    orig = dt
    if dt == "float16":  # accumulate in float32, round once at the end
        dt = "float32"
        q, k, v = (ctx.emit(op.astype(t, dt)) for t in (q, k, v))
        if attn_mask is not None and dtype_of(attn_mask) != "bool":
            attn_mask = ctx.emit(op.astype(attn_mask, dt))
    batch, hq, sq, head = shape_of(q)
    hk, skv = shape_of(k)[1], shape_of(k)[2]
    if not all(isinstance(d, int) for d in (sq, skv, head)):
        raise LoweringError("Attention needs static sequence lengths and head size")
    root = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(head))
    neg_inf, zero = relax.const(-np.inf, dt), relax.const(0.0, dt)

    def additive(mask):
        return op.where(mask, zero, neg_inf) if dtype_of(mask) == "bool" else mask

    if attn_mask is not None:
        mdims = shape_of(attn_mask)
        if isinstance(mdims[-1], int) and mdims[-1] < skv:
            fill = relax.const(False, "bool") if dtype_of(attn_mask) == "bool" else neg_inf
            pad = op.broadcast_to(fill, mdims[:-1] + [skv - mdims[-1]])
            attn_mask = ctx.emit(op.concat([attn_mask, ctx.emit(pad)], axis=-1))
    i_idx = relax.const(np.arange(sq, dtype=np.int64).reshape(sq, 1), "int64")
    j_idx = relax.const(np.arange(skv, dtype=np.int64).reshape(1, skv), "int64")
    if nonpad_kv_seqlen is not None and past_key is None:
        lengths = ctx.emit(op.astype(nonpad_kv_seqlen, "int64"))
        offset = ctx.emit(op.reshape(ctx.emit(op.subtract(lengths, relax.const(sq, "int64"))), [batch, 1, 1, 1]))
    else:
        offset = relax.const(int(past_len), "int64")
    bias = None
    if is_causal:
        allowed = op.less_equal(j_idx, op.add(i_idx, offset))
        bias = op.where(allowed, zero, neg_inf)
        if attn_mask is not None:
            bias = op.add(additive(attn_mask), ctx.emit(bias))
    elif attn_mask is not None:
        bias = additive(attn_mask)
    if left_window_size >= 0 or right_window_size >= 0:
        diff = ctx.emit(op.subtract(op.add(i_idx, offset), j_idx))
        allowed = None
        if left_window_size >= 0:
            allowed = op.less_equal(diff, relax.const(left_window_size, "int64"))
        if right_window_size >= 0:
            right = op.less_equal(op.negative(diff), relax.const(right_window_size, "int64"))
            allowed = right if allowed is None else op.logical_and(ctx.emit(allowed), ctx.emit(right))
        window = op.where(allowed, zero, neg_inf)
        bias = window if bias is None else op.add(ctx.emit(bias), ctx.emit(window))
    if nonpad_kv_seqlen is not None:
        lengths = ctx.emit(op.astype(nonpad_kv_seqlen, "int64"))
        valid = op.less(op.reshape(j_idx, [1, 1, 1, skv]), ctx.emit(op.reshape(lengths, [batch, 1, 1, 1])))
        pad_bias = op.where(valid, zero, neg_inf)
        bias = pad_bias if bias is None else op.add(ctx.emit(bias), ctx.emit(pad_bias))
    if bias is not None:
        bias = ctx.emit(bias)
    if hq != hk and isinstance(hq, int) and isinstance(hk, int) and hq % hk == 0:
        k = ctx.emit(op.repeat(k, hq // hk, axis=1))
        v = ctx.emit(op.repeat(v, hq // hk, axis=1))
    qk = op.matmul(ctx.emit(op.multiply(q, relax.const(root, dt))),
                   ctx.emit(op.permute_dims(ctx.emit(op.multiply(k, relax.const(root, dt))), [0, 1, 3, 2])))
    qk = ctx.emit(qk)
    if softcap and softcap > 0:
        qk = ctx.emit(op.multiply(op.tanh(op.divide(qk, relax.const(softcap, dt))), relax.const(softcap, dt)))
    qk_out = qk
    logits = qk if bias is None else ctx.emit(op.add(qk, bias))
    if qk_matmul_output_mode == 2:
        qk_out = logits
    if softmax_precision is not None:
        from lepton_opt.targets.lower import DTYPES
        import onnx_ir as ir

        logits = ctx.emit(op.astype(logits, DTYPES[ir.DataType(softmax_precision)]))
    probs = ctx.emit(op.nn.softmax(logits, axis=-1))
    if bias is not None:
        # A row whose every key is masked attends nothing: 0, not softmax's NaN.
        masked = op.equal(op.min(op.astype(op.equal(bias, neg_inf), "int8"), axis=-1, keepdims=True),
                          relax.const(1, "int8"))
        probs = ctx.emit(op.where(ctx.emit(masked), relax.const(0.0, dtype_of(probs)), probs))
    if qk_matmul_output_mode == 3:
        qk_out = probs
    if dtype_of(probs) != dt:
        probs = ctx.emit(op.astype(probs, dt))
    y = ctx.emit(op.matmul(probs, v))
    if rank3:
        y = ctx.emit(op.permute_dims(y, [0, 2, 1, 3]))
        y = op.reshape(y, [batch, sq, -1])
    if orig != dt:
        y = op.astype(ctx.emit(y), orig)
    if dtype_of(qk_out) != orig:
        qk_out = op.astype(qk_out, orig)
    return [y, present_k, present_v, qk_out]


def NegativeLogLikelihoodLoss(ctx, x, target, weight=None, *, ignore_index=None, reduction="mean"):
    """loss[n, d...] = -x[n, target[n, d...], d...] * weight[target], 0 where target == ignore_index."""
    dt = dtype_of(x)
    t = target
    ignored = None
    if ignore_index is not None:
        ignored = ctx.emit(op.equal(t, relax.const(ignore_index, dtype_of(t))))
        t = ctx.emit(op.where(ignored, relax.const(0, dtype_of(t)), t))
    picked = op.gather_elements(x, ctx.emit(op.expand_dims(t, 1)), axis=1)
    loss = ctx.emit(op.negative(op.squeeze(ctx.emit(picked), [1])))
    w = None
    if weight is not None:
        w = ctx.emit(op.take(weight, t, axis=0))
    if ignored is not None:
        keep = ctx.emit(op.where(ignored, relax.const(0.0, dt), relax.const(1.0, dt)))
        w = keep if w is None else ctx.emit(op.multiply(w, keep))
    if w is not None:
        loss = ctx.emit(op.multiply(loss, w))
    if reduction == "none":
        return loss
    total = op.sum(loss)
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise LoweringError(f"NegativeLogLikelihoodLoss reduction {reduction!r} is not supported")
    if w is None:
        count = 1
        for d in shape_of(t):
            count = count * d
        return op.divide(total, relax.const(float(count), dt)) if isinstance(count, int) else \
            op.divide(total, op.astype(op.reshape(op.shape_to_tensor(relax.ShapeExpr([count])), []), dt))
    return op.divide(ctx.emit(total), ctx.emit(op.sum(w)))


def SoftmaxCrossEntropyLoss(ctx, scores, labels, weights=None, *, ignore_index=None, reduction="mean"):
    log_prob = ctx.emit(op.nn.log_softmax(scores, axis=1))
    loss = NegativeLogLikelihoodLoss(ctx, log_prob, labels, weights, ignore_index=ignore_index, reduction=reduction)
    return [loss, log_prob]


def RotaryEmbedding(ctx, x, cos_cache, sin_cache, position_ids=None, *, interleaved=0, num_heads=0,
                    rotary_embedding_dim=0):
    """Rotate the first ``rotary_embedding_dim`` channels of each head by the cached angles."""
    dims = shape_of(x)
    if len(dims) == 4:  # [B, H, S, D] -> [B, S, H, D]
        t = ctx.emit(op.permute_dims(x, [0, 2, 1, 3]))
    else:
        if not num_heads:
            raise LoweringError("RotaryEmbedding with a 3-D input needs num_heads")
        b, s_, hidden = dims
        t = ctx.emit(op.reshape(x, [b, s_, num_heads, hidden // num_heads]))
    b, s_, h, d = shape_of(t)
    rot = rotary_embedding_dim or d
    half = rot // 2
    if position_ids is not None:
        cos_cache = ctx.emit(op.take(cos_cache, position_ids, axis=0))
        sin_cache = ctx.emit(op.take(sin_cache, position_ids, axis=0))
    cos = ctx.emit(op.expand_dims(cos_cache, 2))
    sin = ctx.emit(op.expand_dims(sin_cache, 2))
    x_rot = ctx.emit(op.strided_slice(t, [3], [0], [rot])) if rot != d else t
    if interleaved:
        x1 = ctx.emit(op.strided_slice(x_rot, [3], [0], [rot], [2]))
        x2 = ctx.emit(op.strided_slice(x_rot, [3], [1], [rot], [2]))
    else:
        x1 = ctx.emit(op.strided_slice(x_rot, [3], [0], [half]))
        x2 = ctx.emit(op.strided_slice(x_rot, [3], [half], [rot]))
    real = ctx.emit(op.subtract(op.multiply(cos, x1), op.multiply(sin, x2)))
    imag = ctx.emit(op.add(op.multiply(sin, x1), op.multiply(cos, x2)))
    if interleaved:
        pair = ctx.emit(op.concat([op.expand_dims(real, 4), op.expand_dims(imag, 4)], axis=4))
        rotated = ctx.emit(op.reshape(pair, [b, s_, h, rot]))
    else:
        rotated = ctx.emit(op.concat([real, imag], axis=3))
    if rot != d:
        rotated = ctx.emit(op.concat([rotated, ctx.emit(op.strided_slice(t, [3], [rot], [d]))], axis=3))
    if len(dims) == 4:
        return op.permute_dims(rotated, [0, 2, 1, 3])
    return op.reshape(rotated, dims)


def RoiAlign(ctx, *inputs, **attrs):
    """TVM's RoiAlign for mode "avg"; its "max" pools differently from ONNX (max of the bilinear
    samples), so that mode is refused rather than computed wrong."""
    from lepton_opt.targets.ops.reference import reference_for

    if attrs.get("mode", "avg") == "max":
        raise LoweringError("RoiAlign mode 'max' is not supported")
    return reference_for("RoiAlign")(ctx, *inputs)


def MaxUnpool(ctx, x, indices, output_shape=None, *, kernel_shape, pads=None, strides=None):
    """Zeros of the output shape with ``x`` scattered to ``indices`` (MaxPool's flat indices into
    the whole output). The shape is ``output_shape`` (a constant or computable at compile time)
    or the inverse of the pooling. TVM's reference converter fails on any ``output_shape``."""
    dims = shape_of(x)
    if not all(isinstance(d, int) for d in dims):
        raise LoweringError("MaxUnpool needs a static input shape; give it with --input-shape")
    given = ctx.static(2, "output_shape") if output_shape is not None else None
    if given is not None:
        shape = [int(d) for d in np.asarray(given).reshape(-1)]
        if len(shape) != len(dims):
            raise LoweringError(f"output_shape {shape} has rank {len(shape)}, the input has rank {len(dims)}")
    else:
        spatial = len(dims) - 2
        strides = list(strides or [1] * spatial)
        pads = list(pads or [0] * (2 * spatial))
        shape = dims[:2] + [(dims[2 + i] - 1) * strides[i] + kernel_shape[i] - pads[i] - pads[spatial + i]
                            for i in range(spatial)]
    size = int(np.prod(shape))
    zeros = relax.op.zeros(relax.ShapeExpr([size]), dtype_of(x))
    flat = ctx.emit(relax.op.scatter_elements(zeros, relax.op.reshape(indices, [-1]), relax.op.reshape(x, [-1]),
                                              axis=0))
    return relax.op.reshape(flat, shape)


def attention_with_fast_path(fast):
    """``fast`` (the fused ``nn.attention`` lowering) where it gives the spec's result, else ours.

    The fused op covers plain attention with a float mask; a boolean mask (fully masked rows
    must give 0), a KV cache, softcap, padding lengths, windows and the extra outputs take
    the general lowering.
    """
    def convert(ctx, q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, **attrs):
        general = (past_key is not None or past_value is not None or nonpad_kv_seqlen is not None
                   or (attn_mask is not None and dtype_of(attn_mask) == "bool")
                   or attrs.get("softcap") or attrs.get("softmax_precision") is not None
                   or "left_window_size" in attrs or "right_window_size" in attrs or dtype_of(q) == "bfloat16"
                   or any(out is not None and out.name and (out.uses() or out.is_graph_output())
                          for out in ctx.node.outputs[1:]))
        if general:
            return Attention(ctx, q, k, v, attn_mask, past_key, past_value, nonpad_kv_seqlen, **attrs)
        try:
            return fast(ctx, q, k, v, attn_mask, **attrs)
        except LoweringError:
            return Attention(ctx, q, k, v, attn_mask, **attrs)

    return convert


CONVERTERS = {
    "Attention": Attention, "NegativeLogLikelihoodLoss": NegativeLogLikelihoodLoss,
    "SoftmaxCrossEntropyLoss": SoftmaxCrossEntropyLoss, "RotaryEmbedding": RotaryEmbedding, "RoiAlign": RoiAlign,
    "MaxUnpool": MaxUnpool,
    "Conv": Conv, "ConvTranspose": ConvTranspose, "MaxPool": MaxPool, "AveragePool": AveragePool,
    "GlobalAveragePool": GlobalAveragePool, "GlobalMaxPool": GlobalMaxPool,
    "BatchNormalization": BatchNormalization, "InstanceNormalization": InstanceNormalization,
    "LayerNormalization": LayerNormalization, "RMSNormalization": RMSNormalization,
    "GroupNormalization": GroupNormalization, "Softmax": Softmax, "LogSoftmax": LogSoftmax,
    "Hardmax": Hardmax, "MatMul": MatMul, "Gemm": Gemm, "Flatten": Flatten, "Dropout": Dropout,
    "DepthToSpace": DepthToSpace, "SpaceToDepth": SpaceToDepth, "LpNormalization": LpNormalization,
}
