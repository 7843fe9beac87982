"""Tensor-manipulation converters: reshape, slicing, gather/scatter, reductions, casts, padding."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx_ir as ir
from tvm import relax
from tvm import tirx as tir
from tvm.ir.prim import expr as prim

from lepton_opt.targets.lower import DTYPES, LoweringError, dtype_of, shape_of
from lepton_opt.targets.ops.elementwise import in_float32, scalar

op = relax.op


def _norm_axis(axis: int, rank: int) -> int:
    axis = int(axis)
    if not -rank <= axis < max(rank, 1):
        raise LoweringError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _axes_from(ctx, index: int, attr_axes, since_opset: int):
    """Axes given as an attribute before ``since_opset`` and as an input from then on."""
    if ctx.opset < since_opset:
        return None if attr_axes is None else [int(a) for a in attr_axes]
    axes = ctx.static(index, "axes")
    return None if axes is None else [int(a) for a in axes.reshape(-1)]


def _empty(ctx, index: int) -> bool:
    """Input ``index`` is a known tensor with no elements."""
    known = ctx.known(index)
    return known is not None and known.array.size == 0


def _runtime(ctx, index: int) -> bool:
    """Input ``index`` is present but its value is only known at run time.

    A value known symbolically (computed from dynamic input dims) is not "run time": the
    converters handle it as symbolic shapes, or name the input dims to fix.
    """
    return (index < len(ctx.node.inputs) and ctx.node.inputs[index] is not None
            and ctx.known(index) is None)


def _declared_shape(ctx, index: int = 0) -> list[int] | None:
    """The static shape the model declares for output ``index``, or ``None``.

    Ops whose output shape depends on a tensor computed at run time (Unsqueeze axes, Tile
    repeats, OneHot depth, Range bounds, ...) are lowered against this declared shape.
    """
    if index >= len(ctx.node.outputs):
        return None
    shape = ctx.node.outputs[index].shape
    if shape is None:
        return None
    dims = list(shape)
    return dims if all(isinstance(d, int) for d in dims) else None


def _need_declared(ctx, what: str, index: int = 0) -> list[int]:
    dims = _declared_shape(ctx, index)
    if dims is None:
        raise LoweringError(f"{what} is computed at run time and the output shape is not declared; "
                            "make it a constant (e.g. fold the model with fixed input shapes)")
    return dims


def _scalar_of(x: relax.Expr) -> relax.Expr:
    """A 0-d view of a one-element tensor."""
    return op.reshape(x, []) if shape_of(x) != [] else x


def Identity(ctx, x):
    return x


def Cast(ctx, x, *, to, saturate=1, round_mode="up"):
    dtype = DTYPES.get(ir.DataType(to))
    if dtype is None:
        raise LoweringError(f"Cast to {ir.DataType(to).name} is not supported")
    return op.astype(x, dtype)


def CastLike(ctx, x, like, *, saturate=1, round_mode="up"):
    return op.astype(x, dtype_of(like))


def Reshape(ctx, x, shape_in=None, *, allowzero=0, **attrs):
    target = attrs["shape"] if ctx.opset < 5 else ctx.sym_shape(1, "Reshape's shape")
    dims = shape_of(x)
    # 0 copies the input's dim (unless allowzero); -1 is inferred by Relax.
    return op.reshape(x, [dims[i] if isinstance(d, int) and d == 0 and not allowzero else d
                          for i, d in enumerate(target)])


def Transpose(ctx, x, *, perm=None):
    rank = len(shape_of(x))
    return op.permute_dims(x, list(perm) if perm is not None else list(range(rank))[::-1])


def Concat(ctx, *xs, axis):
    xs = [x for x in xs if x is not None]
    return op.concat(xs, axis=axis)


def Split(ctx, x, split_in=None, *, axis=0, num_outputs=None, **attrs):
    dims = shape_of(x)
    axis = _norm_axis(axis, len(dims))
    n_out = len(ctx.node.outputs)
    if n_out == 1:  # torch exports unbind of a size-1 dim so: Relax's split would give no tuple
        return [x]
    if ctx.opset >= 13 and _runtime(ctx, 1):
        sizes = [_need_declared(ctx, "Split's split", i)[axis] for i in range(n_out)]
    else:
        sizes = attrs.get("split") if ctx.opset < 13 else ctx.static(1, "Split's split")
    if sizes is None:
        total = dims[axis]
        if not isinstance(total, int):
            return _as_list(ctx, op.split(x, n_out, axis=axis), n_out)
        chunk = -(-total // n_out)
        sizes = [min(chunk, total - i * chunk) for i in range(n_out)]
    sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
    if 0 in sizes:  # Relax's split wants strictly increasing indices: slice each part instead
        starts = [0, *np.cumsum(sizes)[:-1].tolist()]
        return [op.strided_slice(x, [axis], [int(b)], [int(b) + s]) for b, s in zip(starts, sizes)]
    indices = list(np.cumsum(sizes)[:-1])
    return _as_list(ctx, op.split(x, [int(i) for i in indices], axis=axis), n_out)


def _as_list(ctx, tuple_expr, n):
    t = ctx.emit(tuple_expr)
    return [relax.TupleGetItem(t, i) for i in range(n)]


def Slice(ctx, x, starts_in=None, ends_in=None, axes_in=None, steps_in=None, **attrs):
    dims = shape_of(x)
    rank = len(dims)
    symbolic_end = False
    if ctx.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes_v, steps_v = attrs.get("axes"), None
    elif any(_runtime(ctx, i) for i in range(1, 5)):
        return _reference_or_declared(ctx, x, "Slice", "Slice's starts/ends/axes/steps")
    else:
        starts = ctx.static(1, "Slice's starts")
        axes_v, steps_v = ctx.static(3, "Slice's axes"), ctx.static(4, "Slice's steps")
        known_ends = ctx.known(2)
        # An end that is a symbolic dim: a constant table cut to the input's length, as BERT-style
        # exports do with the position ids and token types they keep as buffers (buffer[:, :sequence]).
        symbolic_end = known_ends is not None and known_ends.is_symbolic
        ends = known_ends.array if symbolic_end else ctx.static(2, "Slice's ends")
    starts = [int(s) for s in np.asarray(starts).reshape(-1)]
    ends = [e if isinstance(e, prim.Expr) else int(e) for e in np.asarray(ends).reshape(-1).tolist()]
    axes_v = list(range(len(starts))) if axes_v is None else [_norm_axis(a, rank) for a in np.asarray(axes_v).reshape(-1)]
    steps_v = [1] * len(starts) if steps_v is None else [int(s) for s in np.asarray(steps_v).reshape(-1)]
    begin, end, stride = [], [], []
    inbound = True  # every axis written in bounds, which the slice may then assume
    trimmed = {}  # position -> the negative end an axis had before it was written as dim + end
    for ax, s, e, st in zip(axes_v, starts, ends, steps_v):
        dim = dims[ax]
        if st == 0:
            raise LoweringError("Slice step must not be 0")
        if isinstance(e, prim.Expr):
            # Written with that end and in bounds: onnxruntime's clamping to the table's length has no
            # symbolic form (an input longer than the table is the model's own error).
            if st != 1 or s < 0 or (isinstance(dim, int) and s > dim):
                raise ctx.lowerer.symbolic_error(np.array(ends, dtype=object), "Slice's ends")
        elif isinstance(dim, int):
            s, e, st = slice(s, e, st).indices(dim)
            if st < 0 and e < 0:
                e, inbound = -(2**31), False  # "before index 0" in Relax's end convention for negative strides
        elif st == 1 and 0 <= s < 2**31 and (-(2**31) < e < 0 or e >= 2**31 - 1):
            # The first or last elements dropped from a symbolic axis (x[..., :-1], the "same"-padding
            # remover of wav2vec2/HuBERT/WavLM's positional convolution; x[:, 1:], MobileBERT's trigram
            # embedding): written in bounds as dim + e (or dim), the length simplifies (frames + 1 - 1 is
            # frames) and the value adds to, or concatenates with, others of that length. Left to the
            # slice's clamping it is a max/min expression that no broadcast can match ("a tensor of
            # unknown rank" behind it). An axis too short for the cut, which onnxruntime would slice
            # to nothing, fails at run time instead.
            trimmed[len(end)] = e
            e = dim + e if e < 0 else dim
        else:
            s, e, inbound = max(min(s, 2**62), -(2**62)), max(min(e, 2**62), -(2**62)), False
        begin.append(s)
        end.append(e)
        stride.append(st)
    if not inbound:
        if symbolic_end:  # a clamped axis beside the symbolic end: no in-bounds form
            raise ctx.lowerer.symbolic_error(np.array(ends, dtype=object), "Slice's ends")
        for position, e in trimmed.items():
            end[position] = e
    return op.strided_slice(x, axes_v, begin, end, stride, assume_inbound=inbound and bool(symbolic_end or trimmed))


def _reference_or_declared(ctx, x, op_type, what):
    from lepton_opt.targets.ops.reference import reference_for

    inputs = [None if v is None else ctx.lowerer.expr(v) for v in ctx.node.inputs]
    out = ctx.emit(reference_for(op_type)(ctx, *inputs))
    dims = _declared_shape(ctx)
    if dims is not None and out.ty.ndim in (-1, len(dims)):
        out = ctx.bb.match_cast(out, relax.TensorType(dims, dtype_of(out)))
    return out


def _nearest_index(size_in: int, size_out: int, scale: Fraction, transform: str, rounding: str) -> np.ndarray:
    """The input index each output index of a nearest-neighbour resize reads along one axis,
    in exact arithmetic (ONNX's formulas; a float32 ``1 / scale`` turned a .5 tie at a 2 -> 7
    resize into the other neighbour)."""
    index = []
    for i in range(size_out):
        if transform == "asymmetric":
            x = Fraction(i) / scale
        elif transform == "align_corners":
            x = Fraction(i * (size_in - 1), size_out - 1) if size_out > 1 else Fraction(0)
        elif transform == "pytorch_half_pixel" and size_out == 1:
            x = Fraction(0)
        else:  # half_pixel, pytorch_half_pixel
            x = (Fraction(i) + Fraction(1, 2)) / scale - Fraction(1, 2)
        floor = math.floor(x)
        tie = x - floor == Fraction(1, 2)
        if rounding == "floor":
            j = floor
        elif rounding == "ceil":
            j = math.ceil(x)
        elif rounding == "round_prefer_ceil":
            j = floor + 1 if tie else math.floor(x + Fraction(1, 2))
        else:  # round_prefer_floor
            j = floor if tie else math.floor(x + Fraction(1, 2))
        index.append(min(max(j, 0), size_in - 1))
    return np.asarray(index, np.int64)


def _nearest_resize(x, dims: list[int], out: list[int], scales: list[Fraction], transform: str,
                    rounding) -> relax.Expr:
    """Nearest-neighbour resize as one gather per resized axis (``rounding``: an ONNX
    nearest_mode, or per axis); integer upsampling factors read as repeats."""
    for axis, (n, m, scale) in enumerate(zip(dims, out, scales)):
        mode = rounding[axis] if isinstance(rounding, list) else rounding
        if n == m and scale == 1:
            continue
        index = _nearest_index(n, m, scale, transform, mode)
        if m % n == 0 and np.array_equal(index, np.repeat(np.arange(n), m // n)):
            x = op.repeat(x, m // n, axis)
        else:
            x = op.take(x, relax.const(index, "int64"), axis)
    return x


def _exact_nearest(ctx, x, scales, sizes, attrs, declared: list[int] | None = None) -> relax.Expr | None:
    """Resize nearest with static shapes, when some axis is not an integer up/down factor (where
    TVM's float32 sampling can pick the other neighbour at a tie): exact index gathers."""
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    if attrs.get("mode", "nearest") != "nearest" or transform not in (
            "half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel") or "axes" in attrs:
        return None
    dims = shape_of(x)
    if not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    if declared is not None:  # sizes (or integer scales) computed at run time: the declared shape
        out = list(declared)
        factors = [Fraction(m, n) for m, n in zip(out, dims)]
    elif sizes is not None:
        known = ctx.known(3)
        if known is None or known.is_symbolic:
            return None
        out = [int(v) for v in known.numeric().reshape(-1)]
        factors = [Fraction(m, n) for m, n in zip(out, dims)]
    elif scales is not None:
        known = ctx.known(2)
        if known is None or known.is_symbolic:
            return None
        factors = [Fraction(float(v)) for v in known.numeric().reshape(-1)]
        out = [math.floor(n * f) for n, f in zip(dims, factors)]
    else:
        return None
    if len(out) != len(dims) or any(m < 1 for m in out):
        return None
    if all(f.denominator == 1 or (f.numerator == 1 and f.denominator & (f.denominator - 1) == 0) for f in factors):
        return None  # integer factors and power-of-two reductions: TVM's kernel samples exactly
    return _nearest_resize(x, dims, out, factors, transform, attrs.get("nearest_mode", "round_prefer_floor"))


def Upsample(ctx, x, scales=None, *, mode="nearest", **attrs):
    """Upsample (opsets 7-9): Resize with ``asymmetric`` sampling, nearest taking the floor."""
    # an attribute before opset 9 (the keyword ``scales`` then), an input from 9 on
    values = scales if ctx.opset < 9 else ctx.static(1, "Upsample's scales")
    dims = shape_of(x)
    if values is None or not all(isinstance(d, int) and d > 0 for d in dims):
        raise LoweringError("Upsample needs constant scales and static input dimensions")
    factors = [Fraction(float(v)) for v in np.asarray(values, np.float32).reshape(-1)]
    if len(factors) != len(dims):
        raise LoweringError(f"Upsample has {len(factors)} scales for a rank-{len(dims)} input")
    if any(f < 1 for f in factors):
        raise LoweringError("Upsample's scales must be at least 1 (use Resize to shrink)")
    out = [math.floor(n * f) for n, f in zip(dims, factors)]
    if mode == "nearest":
        return _nearest_resize(x, dims, out, factors, "asymmetric", "floor")
    if mode not in ("linear", "bilinear"):
        raise LoweringError(f"Upsample mode {mode!r} is not supported")
    if len(dims) != 4 or factors[:2] != [1, 1]:
        raise LoweringError("Upsample linear is supported on the two spatial axes of NCHW tensors")
    return op.image.resize2d(x, [out[2], out[3]], layout="NCHW", method="linear",
                             coordinate_transformation_mode="asymmetric")


def Resize(ctx, x, roi=None, scales=None, sizes=None, **attrs):
    """TVM's Resize, with scales / sizes computed at run time taken from the declared output shape
    (TVM derives the sampling from the output size either way)."""
    from lepton_opt.targets.ops.reference import reference_for

    # An empty roi or scales tensor stands for "not given" (torch's exports pass an empty scales
    # next to sizes); TVM's converter takes a present tensor for a given one.
    if roi is not None and _empty(ctx, 1):
        roi = None
    if scales is not None and _empty(ctx, 2):
        scales = None
    declared = None
    if _runtime(ctx, 2) or _runtime(ctx, 3):
        out = declared = _need_declared(ctx, "Resize's scales/sizes")
        dims = shape_of(x)
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise LoweringError("Resize with run-time scales/sizes needs static input dimensions")
        axes = [_norm_axis(a, len(dims)) for a in attrs.get("axes", range(len(dims)))]
        if _runtime(ctx, 3):
            sizes = relax.const(np.array([out[a] for a in axes], np.int64), "int64")
        if _runtime(ctx, 2):
            if any(out[a] % dims[a] for a in axes):
                # TVM samples at out/in; a run-time scale that is not that ratio cannot be honoured.
                raise LoweringError("Resize with scales computed at run time is supported for integer "
                                    "upsampling factors only; make the scales a constant")
            scales = relax.const(np.array([out[a] / dims[a] for a in axes], np.float32), "float32")
    if attrs.get("antialias"):
        raise LoweringError("Resize with antialias=1 is not supported")
    if "axes" in attrs:  # the sizes / scales cover some axes only: the declared full-rank shape
        declared = _declared_shape(ctx)
    exact = _exact_nearest(ctx, x, scales, sizes, {k: v for k, v in attrs.items() if k != "axes"},
                           declared) if "axes" not in attrs or declared is not None else None
    if exact is not None:
        return exact
    if "axes" in attrs or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        # TVM's converter reads full-rank scales / sizes and knows neither attribute: give it
        # the full-rank output size (declared, or what the policy computes).
        out = _declared_shape(ctx)
        dims = shape_of(x)
        if out is None or not all(isinstance(d, int) and d > 0 for d in dims):
            raise LoweringError("Resize with axes / keep_aspect_ratio_policy needs static shapes")
        if "axes" in attrs and len(ctx.node.inputs) > 1 and ctx.node.inputs[1] is not None \
                and attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
            raise LoweringError("Resize tf_crop_and_resize with axes is not supported")
        if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise LoweringError("Resize keep_aspect_ratio_policy other than stretch is not supported")
        if scales is not None and sizes is None:
            if any(o % d for o, d in zip(out, dims)):
                raise LoweringError("Resize with axes is supported for integer scale factors only")
            scales = relax.const(np.array([o / d for o, d in zip(out, dims)], np.float32), "float32")
        else:
            sizes = relax.const(np.array(out, np.int64), "int64")
    return reference_for("Resize")(ctx, x, roi, scales, sizes)


def TopK(ctx, x, k, *, axis=-1, largest=1, sorted=1):  # noqa: A002 - the ONNX attribute name
    """TVM's TopK; a k computed at run time is read from the declared output shape."""
    from lepton_opt.targets.ops.reference import reference_for

    if _runtime(ctx, 1):
        out = _need_declared(ctx, "TopK's k")
        k = relax.const(np.array([out[_norm_axis(axis, len(out))]], np.int64), "int64")
    return reference_for("TopK")(ctx, x, k)


def _wrap_indices(ctx, indices, dim, index_input: int):
    """ONNX allows negative indices; Relax's take does not. Symbolic dims are left as they are."""
    known = ctx.known(index_input)
    if known is not None and not known.is_symbolic and isinstance(dim, int):
        idx = known.numeric()
        return relax.const(np.where(idx < 0, idx + dim, idx).astype(idx.dtype), known.dtype)
    if not isinstance(dim, int) or dtype_of(indices).startswith("uint"):
        return indices
    return op.where(op.less(indices, scalar(indices, 0)), op.add(indices, scalar(indices, dim)), indices)


def Gather(ctx, x, indices, *, axis=0):
    dims = shape_of(x)
    axis = _norm_axis(axis, len(dims))
    indices = _wrap_indices(ctx, indices, dims[axis], 1)
    # Indices are clipped: an out-of-range id computed at run time (a token id) must not read
    # outside the table. TVM's "fast" mode would, and it logs a warning for every take built
    # with it (users read those lines at compile time); for in-range indices both agree.
    return op.take(x, indices, axis=axis, mode="clip")


def GatherElements(ctx, x, indices, *, axis=0):
    dims = shape_of(x)
    axis = _norm_axis(axis, len(dims))
    return op.gather_elements(x, _wrap_indices(ctx, indices, dims[axis], 1), axis=axis)


def GatherND(ctx, x, indices, *, batch_dims=0):
    return op.gather_nd(x, indices, batch_dims=batch_dims)


def ScatterElements(ctx, x, indices, updates, *, axis=0, reduction="none"):
    dims = shape_of(x)
    axis = _norm_axis(axis, len(dims))
    mode = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}[reduction]
    return op.scatter_elements(x, _wrap_indices(ctx, indices, dims[axis], 1), updates, axis=axis, reduction=mode)


def ScatterND(ctx, x, indices, updates, *, reduction="none"):
    mode = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}[reduction]
    return op.scatter_nd(x, indices, updates, reduction=mode)


def Squeeze(ctx, x, axes_in=None, **attrs):
    dims = shape_of(x)
    if ctx.opset >= 13 and _runtime(ctx, 1):
        return op.reshape(x, _need_declared(ctx, "Squeeze's axes"))
    axes = _axes_from(ctx, 1, attrs.get("axes"), 13)
    if axes is None:
        axes = [i for i, d in enumerate(dims) if isinstance(d, int) and d == 1]
    return op.squeeze(x, [_norm_axis(a, len(dims)) for a in axes])


def Unsqueeze(ctx, x, axes_in=None, **attrs):
    if ctx.opset >= 13 and _runtime(ctx, 1):
        return op.reshape(x, _need_declared(ctx, "Unsqueeze's axes"))
    axes = _axes_from(ctx, 1, attrs.get("axes"), 13)
    rank = len(shape_of(x)) + len(axes)
    out = x
    for a in sorted(_norm_axis(a, rank) for a in axes):
        out = ctx.emit(op.expand_dims(out, a))
    return out


def _broadcast_dims(a: list, b: list) -> list:
    rank = max(len(a), len(b))
    a = [1] * (rank - len(a)) + list(a)
    b = [1] * (rank - len(b)) + list(b)
    out = []
    for p, q in zip(a, b):
        if isinstance(p, int) and p == 1:
            out.append(q)
        elif isinstance(q, int) and q == 1:
            out.append(p)
        else:
            out.append(p)
    return out


def Expand(ctx, x, shape):
    if _runtime(ctx, 1):
        return op.broadcast_to(x, _need_declared(ctx, "Expand's shape"))
    target = ctx.sym_shape(1, "Expand's shape")
    return op.broadcast_to(x, _broadcast_dims(shape_of(x), target))


def Tile(ctx, x, repeats):
    if _runtime(ctx, 1):
        out = _need_declared(ctx, "Tile's repeats")
        dims = shape_of(x)
        if not all(isinstance(d, int) for d in dims):
            raise LoweringError("Tile with run-time repeats needs static input dimensions")
        return op.tile(x, [o // d if d else 1 for o, d in zip(out, dims)])
    known = ctx.known(1)
    if known is not None and known.is_symbolic:
        # Repeats that are a symbolic dim (WavLM's relative position bias repeated over the batch,
        # ``bias.repeat(batch, 1, 1)``): each axis d becomes [1, d], broadcast to [r, d] and merged
        # to r * d, which Relax takes with symbolic r where tile wants integers.
        reps = known.array.reshape(-1).tolist()
        dims = shape_of(x)
        if len(reps) != len(dims):
            raise LoweringError(f"Tile's repeats has {len(reps)} values for a rank-{len(dims)} input")
        pairs = [v for d in dims for v in (1, d)]
        spread = [v for r, d in zip(reps, dims) for v in (r, d)]
        y = ctx.emit(op.broadcast_to(ctx.emit(op.reshape(x, pairs)), spread))
        return op.reshape(y, [r * d for r, d in zip(reps, dims)])
    reps = ctx.static(1, "Tile's repeats")
    return op.tile(x, [int(r) for r in reps.reshape(-1)])


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def Pad(ctx, x, pads_in=None, value_in=None, axes_in=None, *, mode="constant", **attrs):
    dims = shape_of(x)
    rank = len(dims)
    if ctx.opset < 11:
        pad_list = [int(p) for p in attrs["pads"]]
        value = float(attrs.get("value", 0.0))
        axes_v = list(range(rank))
    elif _runtime(ctx, 1) or _runtime(ctx, 2):
        return _pad_runtime(ctx, x, pads_in, value_in, mode)
    else:
        pad_list = [int(p) for p in ctx.static(1, "Pad's pads").reshape(-1)]
        cv = ctx.static(2, "Pad's constant_value")
        value = 0.0 if cv is None or cv.size == 0 else cv.reshape(-1)[0].item()
        a = ctx.static(3, "Pad's axes")
        axes_v = list(range(rank)) if a is None else [_norm_axis(v, rank) for v in a.reshape(-1)]
    n = len(axes_v)
    before = [0] * rank
    after = [0] * rank
    for i, ax in enumerate(axes_v):
        before[ax], after[ax] = pad_list[i], pad_list[i + n]
    if any(p < 0 for p in before + after):
        # Negative pads crop: slice first, then pad what remains positive.
        x = ctx.emit(op.strided_slice(
            x, list(range(rank)), [max(-b, 0) for b in before],
            [d - max(-a, 0) if isinstance(d, int) else d - max(-a, 0) for d, a in zip(dims, after)]))
        before = [max(b, 0) for b in before]
        after = [max(a, 0) for a in after]
    if not any(before + after):
        return x
    width = [v for pair in zip(before, after) for v in pair]
    if mode not in _PAD_MODES:
        raise LoweringError(f"Pad mode {mode!r} is not supported")
    return op.nn.pad(x, width, pad_mode=_PAD_MODES[mode], pad_value=value)


def _pad_runtime(ctx, x, pads, value, mode):
    """Pad with pads (or the constant value) computed at run time, against the declared output
    shape: each padded axis gathers from source index (output index - pad_begin), mapped into
    range by the mode (constant positions outside are then filled)."""
    dims = shape_of(x)
    rank = len(dims)
    out = _need_declared(ctx, "Pad's pads")
    if not all(isinstance(d, int) for d in dims):
        raise LoweringError("Pad with run-time pads needs static input dimensions")
    a = ctx.static(3, "Pad's axes")
    axes_v = list(range(rank)) if a is None else [_norm_axis(v, rank) for v in a.reshape(-1)]
    if _runtime(ctx, 1):
        pads = ctx.emit(op.astype(pads, "int64"))
    else:
        pads = relax.const(ctx.static(1, "Pad's pads").reshape(-1).astype(np.int64), "int64")
    fill = None
    if mode == "constant":
        fill = scalar(x, 0) if value is None else ctx.emit(op.astype(_scalar_of(value), dtype_of(x))) \
            if shape_of(value) in ([], [1]) else scalar(x, 0)
    y = x
    for i, ax in enumerate(axes_v):
        n, m = dims[ax], out[ax]
        if n == m and mode != "constant":
            pass
        begin = ctx.emit(op.reshape(op.take(pads, relax.const(i, "int64"), axis=0), []))
        src = ctx.emit(op.subtract(relax.const(np.arange(m, dtype=np.int64), "int64"), begin))
        if mode == "constant":
            idx = op.clip(src, 0, max(n - 1, 0))
        elif mode == "edge":
            idx = op.clip(src, 0, n - 1)
        elif mode == "wrap":
            idx = op.floor_mod(src, relax.const(n, "int64"))
        elif mode == "reflect":
            period = relax.const(max(2 * (n - 1), 1), "int64")
            r = ctx.emit(op.floor_mod(src, period))
            idx = op.where(op.greater_equal(r, relax.const(n, "int64")), op.subtract(period, r), r)
        else:
            raise LoweringError(f"Pad mode {mode!r} is not supported")
        y = ctx.emit(op.take(y, ctx.emit(idx), axis=ax))
        if mode == "constant":
            inside = op.logical_and(op.greater_equal(src, relax.const(0, "int64")),
                                    op.less(src, relax.const(n, "int64")))
            shape = [1] * rank
            shape[ax] = m
            y = ctx.emit(op.where(ctx.emit(op.reshape(inside, shape)), y, fill))
    return y


def CenterCropPad(ctx, x, shape_in, *, axes=None):
    """Crop (centered, extra row at the end) or zero-pad (centered, extra at the end) to a shape."""
    dims = shape_of(x)
    rank = len(dims)
    if _runtime(ctx, 1):
        out = _need_declared(ctx, "CenterCropPad's shape")
    else:
        target = [int(v) for v in ctx.static(1, "CenterCropPad's shape").reshape(-1)]
        axes_v = list(range(rank)) if axes is None else [_norm_axis(a, rank) for a in axes]
        out = list(dims)
        for a, t in zip(axes_v, target):
            out[a] = t
    if not all(isinstance(d, int) for d in dims):
        raise LoweringError("CenterCropPad needs static input dimensions")
    y = x
    for a, (n, t) in enumerate(zip(dims, out)):
        if t < n:
            start = (n - t) // 2
            y = ctx.emit(op.strided_slice(y, [a], [start], [start + t]))
        elif t > n:
            width = [0] * (2 * rank)
            width[2 * a], width[2 * a + 1] = (t - n) // 2, t - n - (t - n) // 2
            y = ctx.emit(op.nn.pad(y, width, pad_mode="constant", pad_value=0.0))
    return y


def EyeLike(ctx, x, *, dtype=None, k=0):
    rows, cols = shape_of(x)
    if not (isinstance(rows, int) and isinstance(cols, int)):
        raise LoweringError("EyeLike needs a static input shape")
    out = DTYPES.get(ir.DataType(dtype)) if dtype is not None else dtype_of(x)
    if out is None:
        raise LoweringError(f"EyeLike to {ir.DataType(dtype).name} is not supported")
    eye = np.eye(rows, cols, k=k).astype("bool" if out == "bool" else out)
    return relax.const(eye, out)


def ConstantOfShape(ctx, shape, *, value=None):
    dims = _need_declared(ctx, "ConstantOfShape's shape") if _runtime(ctx, 0) else \
        ctx.sym_shape(0, "ConstantOfShape's shape")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    dtype = str(fill.dtype) if value is not None else "float32"
    return op.broadcast_to(relax.const(fill[0], dtype), dims)


def Range(ctx, start, limit, delta):
    if any(_runtime(ctx, i) for i in range(3)):
        (count,) = _need_declared(ctx, "Range's bounds")
        dtype = dtype_of(start)
        steps = op.arange(0, count, 1, dtype)
        return op.add(op.multiply(steps, _scalar_of(delta)), _scalar_of(start))
    knowns = [ctx.known(i) for i in range(3)]
    if any(k.is_symbolic for k in knowns) and not knowns[2].is_symbolic and dtype_of(start).startswith("int"):
        # Bounds from a dynamic dim (a decoder's past length: Range(past, past + 1)): a symbolic arange.
        a, b, c = (k.array.reshape(-1)[0] for k in knowns)
        step = int(c)
        if step == 0:
            raise LoweringError("Range's delta is 0")
        return op.arange(a, b, step, dtype_of(start))
    values = [ctx.static(i, "Range's bounds") for i in range(3)]
    a, b, c = (v.reshape(-1)[0].item() for v in values)
    return relax.const(np.arange(a, b, c, dtype=values[0].dtype), dtype_of(start))


# Reductions whose running total needs float32 when the input is float16/bfloat16.
_ACCUMULATING = frozenset({"ReduceSum", "ReduceMean", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
                           "ReduceLogSumExp", "ReduceProd"})


def _reduce(fn, since_opset=18, name=""):
    def convert(ctx, x, axes_in=None, **kwargs):
        if name in _ACCUMULATING:
            return in_float32(ctx, x, lambda t: reduce(ctx, t, axes_in, **kwargs))
        return reduce(ctx, x, axes_in, **kwargs)

    def reduce(ctx, x, axes_in=None, *, keepdims=1, noop_with_empty_axes=0, **attrs):
        dims = shape_of(x)
        if ctx.opset >= since_opset and _runtime(ctx, 1):
            length = shape_of(axes_in)
            if length != [0]:
                return _reduce_runtime_axes(ctx, name, x, axes_in, bool(keepdims))
            axes_v = []
        else:
            axes_v = _axes_from(ctx, 1, attrs.get("axes"), since_opset)
        if not axes_v:
            if noop_with_empty_axes:
                return x
            axes_v = list(range(len(dims)))
        return fn(x, [_norm_axis(a, len(dims)) for a in axes_v], bool(keepdims))

    return convert


# Reductions as (elementwise before, reduce, elementwise after), for axes known only at run time.
_REDUCE_PARTS = {
    "ReduceSum": (None, op.sum, None), "ReduceMean": (None, op.mean, None), "ReduceMax": (None, op.max, None),
    "ReduceMin": (None, op.min, None), "ReduceProd": (None, op.prod, None),
    "ReduceL1": (op.abs, op.sum, None), "ReduceL2": (lambda x: op.multiply(x, x), op.sum, op.sqrt),
    "ReduceSumSquare": (lambda x: op.multiply(x, x), op.sum, None), "ReduceLogSum": (None, op.sum, op.log),
}


def _reduce_runtime_axes(ctx, name, x, axes, keepdims):
    """A reduction over axes computed at run time (their count is static).

    Each axis is reduced in place (the result broadcast back to the full shape) when the run-time
    axes name it; the reduced axes are then cut to length 1 with a dynamic slice, and dropped by a
    dynamic reshape unless ``keepdims``.
    """
    dims = shape_of(x)
    rank = len(dims)
    (count,) = shape_of(axes)
    if not isinstance(count, int):
        raise LoweringError(f"{name} with a run-time axes tensor of unknown length is not supported")
    if any(isinstance(d, int) and d == 0 for d in dims):
        # An empty input: every output element reduces an empty set, or the output is empty too.
        out_dims = _need_declared(ctx, f"{name}'s axes")
        dtype = dtype_of(x)
        big = np.finfo(dtype).max if dtype.startswith("float") else np.iinfo(dtype).max if dtype != "bool" else 1
        identity = {"ReduceProd": 1, "ReduceMax": -np.inf if dtype.startswith("float") else -big,
                    "ReduceMin": np.inf if dtype.startswith("float") else big,
                    "ReduceLogSum": -np.inf, "ReduceLogSumExp": -np.inf}.get(name, 0)
        if dtype == "bool":
            identity = {"ReduceMax": 0, "ReduceMin": 1}.get(name, 0)
        return op.broadcast_to(relax.const(np.array(identity).astype(dtype), dtype), out_dims)
    if dtype_of(x) == "bool":
        return op.astype(_reduce_runtime_axes(ctx, name, ctx.emit(op.astype(x, "int8")), axes, keepdims), "bool")
    a = ctx.emit(op.astype(axes, "int64"))
    a = ctx.emit(op.where(op.less(a, relax.const(0, "int64")), op.add(a, relax.const(rank, "int64")), a))
    flags = [ctx.emit(op.greater(op.sum(op.astype(op.equal(a, relax.const(d, "int64")), "int64")),
                                 relax.const(0, "int64"))) for d in range(rank)]

    def full(t, reduce):
        for d in range(rank):
            red = ctx.emit(op.broadcast_to(reduce(t, [d], keepdims=True), dims))
            t = ctx.emit(op.where(flags[d], red, t))
        return t

    if name == "ReduceLogSumExp":
        peak = full(x, op.max)
        out = op.add(op.log(full(ctx.emit(op.exp(op.subtract(x, peak))), op.sum)), peak)
    else:
        pre, reduce, post = _REDUCE_PARTS[name]
        out = full(ctx.emit(pre(x)) if pre else x, reduce)
        out = post(out) if post else out
    out = ctx.emit(out)
    one = relax.const(1, "int64")
    dim_t = [relax.const(d, "int64") if isinstance(d, int) else
             op.reshape(op.shape_to_tensor(relax.ShapeExpr([d])), []) for d in dims]
    ends = ctx.emit(op.concat([op.reshape(op.where(f, one, d), [1]) for f, d in zip(flags, dim_t)], axis=0))
    out = ctx.emit(op.dynamic_strided_slice(out, relax.const(np.zeros(rank, np.int64), "int64"), ends,
                                            relax.const(np.ones(rank, np.int64), "int64")))
    declared = _declared_shape(ctx)
    kept = declared if keepdims and declared is not None else [tir.Var(f"kept_dim{i}", "int64") for i in range(rank)]
    out = ctx.bb.match_cast(out, relax.TensorType(kept, dtype_of(out)))
    if not keepdims:
        # Output dim j is the j-th kept input dim: sum_d keep_d * (position_d == j) * dim_d.
        keep = ctx.emit(op.astype(op.logical_not(op.concat([op.reshape(f, [1]) for f in flags], axis=0)), "int64"))
        pos = ctx.emit(op.subtract(op.cumsum(keep, axis=0), one))
        sizes = ctx.emit(op.concat([op.reshape(d, [1]) for d in dim_t], axis=0))
        out_rank = rank - count
        j = relax.const(np.arange(out_rank, dtype=np.int64).reshape(-1, 1), "int64")
        hit = op.astype(op.equal(op.reshape(pos, [1, rank]), j), "int64")
        shape_t = ctx.emit(op.sum(op.multiply(op.multiply(hit, op.reshape(keep, [1, rank])),
                                              op.reshape(sizes, [1, rank])), axis=1))
        target = ctx.emit(op.tensor_to_shape(shape_t))
        if declared is not None and len(declared) == out_rank:
            syms = declared
        else:
            syms = [tir.Var(f"reduced_dim{i}", "int64") for i in range(out_rank)]
        ctx.bb.match_cast(target, relax.ShapeType(syms))
        out = ctx.emit(op.reshape(out, relax.ShapeExpr(syms)))
    return out


def _extreme(fn, other, inf, x, axes, keep):
    """max / min; TVM starts a float max at the lowest finite value, so a slice of -inf alone
    would give -3.4e38: such slices are set back to -inf (+inf for min)."""
    out = fn(x, axes, keep)
    dtype = dtype_of(x)
    if not dtype.startswith(("float", "bfloat")):
        return out
    inf_c = relax.const(inf, dtype)
    all_inf = op.equal(other(op.astype(op.equal(x, inf_c), "int8"), axes, keep), relax.const(1, "int8"))
    return op.where(all_inf, inf_c, out)


def _log_sum_exp(x, axes, keep):
    peak = op.max(x, axes, keepdims=True)
    summed = op.sum(op.exp(op.subtract(x, peak)), axes, keepdims=True)
    out = op.add(op.log(summed), peak)
    return out if keep else op.squeeze(out, axes)


REDUCERS = {
    "ReduceSum": (lambda x, a, k: op.sum(x, a, k), 13),
    "ReduceMean": (lambda x, a, k: op.mean(x, a, k), 18),
    "ReduceMax": (lambda x, a, k: _extreme(op.max, op.min, -np.inf, x, a, k), 18),
    "ReduceMin": (lambda x, a, k: _extreme(op.min, op.max, np.inf, x, a, k), 18),
    "ReduceProd": (lambda x, a, k: op.prod(x, a, k), 18),
    "ReduceL1": (lambda x, a, k: op.sum(op.abs(x), a, k), 18),
    "ReduceL2": (lambda x, a, k: op.sqrt(op.sum(op.multiply(x, x), a, k)), 18),
    "ReduceSumSquare": (lambda x, a, k: op.sum(op.multiply(x, x), a, k), 18),
    "ReduceLogSum": (lambda x, a, k: op.log(op.sum(x, a, k)), 18),
    "ReduceLogSumExp": (_log_sum_exp, 18),
}


def _arg_reduce(fn):
    def convert(ctx, x, *, axis=0, keepdims=1, select_last_index=0):
        dims = shape_of(x)
        axis = _norm_axis(axis, len(dims))
        if not select_last_index:
            return op.astype(fn(x, axis, bool(keepdims)), "int64")
        # The last extreme index is the first one in the flipped tensor, mirrored back.
        first = op.astype(fn(ctx.emit(op.flip(x, axis)), axis, bool(keepdims)), "int64")
        return op.subtract(relax.const(dims[axis] - 1, "int64"), ctx.emit(first))

    return convert


def CumProd(ctx, x, axis, *, exclusive=0, reverse=0):
    return CumSum(ctx, x, axis, exclusive=exclusive, reverse=reverse, _fn=op.cumprod)


def CumSum(ctx, x, axis, *, exclusive=0, reverse=0, _fn=op.cumsum):
    dims = shape_of(x)
    if _runtime(ctx, 1):
        # The axis arrives at run time: compute along every axis and select.
        a = ctx.emit(_scalar_of(axis))
        a = ctx.emit(op.where(op.less(a, scalar(a, 0)), op.add(a, scalar(a, len(dims))), a))
        out = None
        for k in reversed(range(len(dims))):
            along = ctx.emit(_cumsum(ctx, x, k, exclusive, reverse, _fn))
            out = along if out is None else op.where(op.equal(a, scalar(a, k)), along, out)
        return out
    ax = _norm_axis(int(ctx.static(1, "CumSum's axis").reshape(-1)[0]), len(dims))
    return _cumsum(ctx, x, ax, exclusive, reverse, _fn)


def _cumsum(ctx, x, ax, exclusive, reverse, fn=op.cumsum):
    if reverse:
        x = ctx.emit(op.flip(x, ax))
    out = fn(x, axis=ax, exclusive=bool(exclusive))
    if reverse:
        out = op.flip(ctx.emit(out), ax)
    return out


def Einsum(ctx, *xs, equation):
    return op.einsum(list(xs), equation.replace(" ", ""))


def Trilu(ctx, x, k=None, *, upper=1):
    if _runtime(ctx, 1):
        # k known at run time: compare column - row with it.
        rows, cols = shape_of(x)[-2:]
        if not (isinstance(rows, int) and isinstance(cols, int)):
            raise LoweringError("Trilu with a run-time k needs static matrix dimensions")
        diff = np.arange(cols, dtype=np.int64).reshape(1, cols) - np.arange(rows, dtype=np.int64).reshape(rows, 1)
        kk = ctx.emit(_scalar_of(op.astype(k, "int64")) if shape_of(k) != [] else op.astype(k, "int64"))
        keep = (op.greater_equal if upper else op.less_equal)(relax.const(diff, "int64"), kk)
        return op.where(ctx.emit(keep), x, relax.const(0, dtype_of(x)))
    kv = ctx.static(1, "Trilu's k")
    k = 0 if kv is None else int(kv.reshape(-1)[0])
    return op.triu(x, k) if upper else op.tril(x, k)


def OneHot(ctx, indices, depth, values, *, axis=-1):
    axis = _norm_axis(axis, len(shape_of(indices)) + 1)
    if _runtime(ctx, 1):
        out_dims = _need_declared(ctx, "OneHot's depth")
        depth_v = out_dims[axis]
    else:
        depth_v = int(ctx.static(1, "OneHot's depth").reshape(-1)[0])
    dtype = dtype_of(values)
    if not dtype_of(indices).startswith("int"):
        indices = ctx.emit(op.astype(indices, "int64"))
    idx = op.where(op.less(indices, scalar(indices, 0)), op.add(indices, scalar(indices, depth_v)), indices)
    if _runtime(ctx, 2) or dtype not in ("float32", "float64", "int32", "int64", "int8", "uint8"):
        # On/off values chosen at run time: a 0/1 mask selects between them.
        mask = op.one_hot(idx, relax.prim_value(tir.const(1, "int32")), relax.prim_value(tir.const(0, "int32")),
                          depth_v, axis=axis)
        off = op.take(values, relax.const(0, "int64"), axis=0)
        on = op.take(values, relax.const(1, "int64"), axis=0)
        return op.where(op.equal(ctx.emit(mask), relax.const(1, "int32")), on, off)
    vals = ctx.static(2, "OneHot's values").reshape(-1)
    return op.one_hot(idx, relax.prim_value(tir.const(vals[1].item(), dtype)),
                      relax.prim_value(tir.const(vals[0].item(), dtype)), depth_v, axis=axis)


def ReverseSequence(ctx, x, sequence_lens, *, batch_axis=1, time_axis=0):
    # out[t, b] = x[L[b] - 1 - t, b] for t < L[b], else x[t, b] (tf2onnx's backward RNNs)
    dims = shape_of(x)
    steps = dims[time_axis]
    if not isinstance(steps, int):
        raise LoweringError("ReverseSequence needs a static time axis")
    rank = len(dims)
    t = relax.const(np.arange(steps, dtype=np.int64).reshape([-1 if a == time_axis else 1 for a in range(rank)]),
                    "int64")  # relax.const makes int64 arrays int32 unless told
    lens = ctx.emit(op.astype(sequence_lens, "int64"))
    lens = ctx.emit(op.reshape(lens, [-1 if a == batch_axis else 1 for a in range(rank)]))
    before = ctx.emit(op.less(t, lens))
    reversed_t = ctx.emit(op.subtract(ctx.emit(op.subtract(lens, relax.const(np.ones([1] * rank, np.int64), "int64"))), t))
    index = ctx.emit(op.where(before, reversed_t, t))
    return op.gather_elements(x, ctx.emit(op.broadcast_to(index, dims)), axis=time_axis)


def _never(what):
    def convert(ctx, *args, **kwargs):
        raise LoweringError(what)

    return convert


CONVERTERS = {
    "Identity": Identity, "Cast": Cast, "CastLike": CastLike, "Reshape": Reshape, "Transpose": Transpose,
    "Concat": Concat, "Split": Split, "Slice": Slice, "Gather": Gather, "GatherElements": GatherElements,
    "GatherND": GatherND, "ScatterElements": ScatterElements, "Scatter": ScatterElements,
    "ScatterND": ScatterND, "Squeeze": Squeeze, "Unsqueeze": Unsqueeze, "Expand": Expand, "Tile": Tile,
    "Pad": Pad, "ConstantOfShape": ConstantOfShape, "Range": Range, "CumSum": CumSum, "Einsum": Einsum,
    "Trilu": Trilu, "OneHot": OneHot, "Resize": Resize, "Upsample": Upsample, "CumProd": CumProd, "TopK": TopK,
    "CenterCropPad": CenterCropPad, "EyeLike": EyeLike, "ReverseSequence": ReverseSequence,
    "ArgMax": _arg_reduce(lambda x, a, k: op.argmax(x, a, k)),
    "ArgMin": _arg_reduce(lambda x, a, k: op.argmin(x, a, k)),
    # Shape, Size and numeric Constants are evaluated at compile time (shape_eval); these only
    # run for what that cannot represent.
    "Shape": _never("Shape of a tensor of unknown rank"),
    "Size": _never("Size of a tensor of unknown rank"),
    "Constant": _never("string and sparse Constant values are not supported"),
}
CONVERTERS.update({name: _reduce(fn, since, name) for name, (fn, since) in REDUCERS.items()})
