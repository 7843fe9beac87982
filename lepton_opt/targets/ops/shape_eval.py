"""Compile-time evaluation of small known values, symbolic dims included.

Exporters compute shapes at run time (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``).
With static input shapes onnxscript's folder removes those chains before lowering; with a
dynamic batch it cannot, because the batch is unknown. Here the same chains are evaluated on
numpy ``object`` arrays whose elements are Python ints or ``prim.Expr``, so ``Reshape``
still receives a shape (``(N, 16, 4, 16)``) rather than a tensor computed at run time.

Each rule maps an op type to ``fn(node, inputs, attrs) -> list[np.ndarray] | None``; ``None``
means "not evaluable here", and the node is lowered as ordinary Relax compute instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
from tvm import tirx as tir
from tvm.ir.prim import expr as prim
from tvm.sym import Analyzer

if TYPE_CHECKING:
    from lepton_opt.targets.lower import Known, Lowerer

_analyzer = Analyzer()

INT_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


def evaluate_known(node: ir.Node, known_inputs: list, lowerer: Lowerer) -> list[Known] | None:
    from lepton_opt.targets.lower import KNOWN_EVAL_LIMIT, DTYPES, Known, shape_of

    if node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    attrs = {name: attr.value for name, attr in node.attributes.items()}
    if op == "Constant":
        array = _constant_value(attrs)
        if array is None:
            return None
        return [Known(array, DTYPES[node.outputs[0].dtype] if node.outputs[0].dtype in DTYPES
                      else str(array.dtype))]
    if op in ("Shape", "Size"):
        src = node.inputs[0]
        dims = shape_of(lowerer.expr(src, "input of Shape"))
        if op == "Size":
            return [Known(_finish(np.array(_product(dims), dtype=object)), "int64")]
        start, end = attrs.get("start", 0), attrs.get("end", len(dims))
        return [Known(_finish(np.array(dims[slice(start, end)], dtype=object)), "int64")]
    rule = RULES.get(op)
    if rule is None:
        return None
    present = [k for v, k in zip(node.inputs, known_inputs) if v is not None]
    if len(present) != sum(v is not None for v in node.inputs) or any(k is None for k in present):
        return None
    if any(k.array.size > KNOWN_EVAL_LIMIT for k in present):
        return None
    arrays = [None if k is None else k.array for k in known_inputs]
    dtypes = [None if k is None else k.dtype for k in known_inputs]
    try:
        results = rule(arrays, dtypes, attrs, lowerer.opset)
    except _NotEvaluable:
        return None
    if results is None:
        return None
    return [Known(_finish(array), dtype) for array, dtype in results]


class _NotEvaluable(Exception):
    pass


def _constant_value(attrs: dict) -> np.ndarray | None:
    if "value" in attrs:
        return attrs["value"].numpy()
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    return None  # strings and sparse tensors


def _product(dims):
    out = 1
    for d in dims:
        out = out * d
    return out


def _finish(array: np.ndarray) -> np.ndarray:
    """Simplify symbolic elements; return a plain int64 array when nothing symbolic is left."""
    if not isinstance(array, np.ndarray):  # numpy returns bare elements for 0-d results
        array = np.array(array, dtype=object if isinstance(array, (prim.Expr, int)) else None)
    if array.dtype != object:
        return array
    flat = []
    for x in array.flat:
        if isinstance(x, prim.Expr):
            x = _analyzer.simplify(x)
            if isinstance(x, tir.IntImm):
                x = int(x.value)
        elif isinstance(x, (np.integer, bool, np.bool_)):
            x = int(x)
        flat.append(x)
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    out = out.reshape(array.shape)
    if all(isinstance(x, int) for x in flat):
        return out.astype(np.int64)
    return out


def _symbolic(a: np.ndarray) -> bool:
    return a.dtype == object


def _obj(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == object else a.astype(object) if a.dtype.kind in "iub" else _raise()


def _raise():
    raise _NotEvaluable


def _axes(axes, rank: int) -> list[int]:
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in np.atleast_1d(axes))


Rule = Callable[[list, list, dict, int], list | None]
RULES: dict[str, Rule] = {}


def rule(*ops: str):
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn

    return register


@rule("Identity")
def _identity(a, d, attrs, opset):
    return [(a[0], d[0])]


@rule("Cast")
def _cast(a, d, attrs, opset):
    from lepton_opt.targets.lower import DTYPES

    to = DTYPES.get(ir.DataType(attrs["to"]))
    if to is None:
        raise _NotEvaluable
    if _symbolic(a[0]):
        if to not in INT_DTYPES:
            raise _NotEvaluable
        return [(a[0], to)]
    if to == "bfloat16":
        raise _NotEvaluable
    return [(a[0].astype(to), to)]


@rule("Gather")
def _gather(a, d, attrs, opset):
    data, idx = a[0], a[1]
    axis = attrs.get("axis", 0)
    if np.asarray(idx).dtype == object:
        raise _NotEvaluable
    dim = data.shape[axis]
    idx = np.where(idx < 0, idx + dim, idx)
    return [(np.take(data, idx, axis=axis), d[0])]


@rule("Concat")
def _concat(a, d, attrs, opset):
    arrays = [x for x in a if x is not None]
    if any(_symbolic(x) for x in arrays):
        arrays = [_obj(x) for x in arrays]
    return [(np.concatenate(arrays, axis=attrs["axis"]), d[0])]


@rule("Unsqueeze")
def _unsqueeze(a, d, attrs, opset):
    axes = attrs.get("axes") if opset < 13 else (None if a[1] is None else _numeric(a[1]))
    if axes is None:
        raise _NotEvaluable
    rank = a[0].ndim + len(np.atleast_1d(axes))
    out = a[0]
    for ax in _axes(axes, rank):
        out = np.expand_dims(out, ax)
    return [(out, d[0])]


@rule("Squeeze")
def _squeeze(a, d, attrs, opset):
    axes = attrs.get("axes") if opset < 13 else (None if len(a) < 2 or a[1] is None else _numeric(a[1]))
    if axes is None:
        return [(np.squeeze(a[0]), d[0])]
    return [(np.squeeze(a[0], axis=tuple(_axes(axes, a[0].ndim))), d[0])]


@rule("Reshape")
def _reshape(a, d, attrs, opset):
    if _symbolic(a[1]):
        raise _NotEvaluable
    shape = [int(s) for s in a[1]]
    if not attrs.get("allowzero", 0):
        shape = [a[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [(a[0].reshape(shape), d[0])]


@rule("Flatten")
def _flatten(a, d, attrs, opset):
    axis = attrs.get("axis", 1)
    axis = axis + a[0].ndim if axis < 0 else axis
    outer = int(np.prod(a[0].shape[:axis], dtype=np.int64))
    return [(a[0].reshape(outer, -1), d[0])]


@rule("Slice")
def _slice(a, d, attrs, opset):
    data = a[0]
    if opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = _numeric(a[1]), _numeric(a[2])
        axes = None if len(a) < 4 or a[3] is None else _numeric(a[3])
        steps = None if len(a) < 5 or a[4] is None else _numeric(a[4])
    axes = list(range(len(starts))) if axes is None else [int(x) % data.ndim for x in axes]
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for ax, s, e, st in zip(axes, starts, ends, steps):
        index[ax] = slice(int(s), _clamp_end(int(e)), int(st))
    return [(data[tuple(index)], d[0])]


def _clamp_end(e: int) -> int | None:
    # Python slicing treats huge ends like ONNX's INT64_MAX sentinels; keep them as None.
    return None if e >= 2**62 else max(e, -(2**62)) if e > -(2**62) else None


def _numeric(a: np.ndarray) -> np.ndarray:
    if a.dtype == object:
        raise _NotEvaluable
    return a


def _binary(fn):
    def apply(a, d, attrs, opset):
        x, y = a[0], a[1]
        if _symbolic(x) or _symbolic(y):
            if d[0] not in INT_DTYPES:
                raise _NotEvaluable
            return [(fn(_obj(x), _obj(y)), d[0])]
        with np.errstate(all="ignore"):
            return [(fn(x, y).astype(x.dtype), d[0])]

    return apply


def _int_div(x, y):
    if x.dtype == object or y.dtype == object:
        return np.vectorize(_sym_div, otypes=[object])(x, y)
    if x.dtype.kind in "iu":
        return np.trunc(np.true_divide(x, y)).astype(x.dtype)
    return x / y


def _sym_div(p, q):
    if isinstance(p, int) and isinstance(q, int):
        return int(p / q) if q else _raise()
    return tir.floordiv(p, q)  # dims are non-negative: floor and truncation agree


RULES["Add"] = _binary(lambda x, y: x + y)
RULES["Sub"] = _binary(lambda x, y: x - y)
RULES["Mul"] = _binary(lambda x, y: x * y)
RULES["Div"] = _binary(_int_div)


@rule("Neg")
def _neg(a, d, attrs, opset):
    return [(-a[0], d[0])]


def _variadic(fn):
    def apply(a, d, attrs, opset):
        arrays = [x for x in a if x is not None]
        if any(_symbolic(x) for x in arrays):
            raise _NotEvaluable
        out = arrays[0]
        for x in arrays[1:]:
            out = fn(out, x)
        return [(out, d[0])]

    return apply


RULES["Max"] = _variadic(np.maximum)
RULES["Min"] = _variadic(np.minimum)


@rule("Equal")
def _equal(a, d, attrs, opset):
    x, y = a[0], a[1]
    if not (_symbolic(x) or _symbolic(y)):
        return [(np.equal(x, y), "bool")]
    x, y = np.broadcast_arrays(_obj(x), _obj(y))
    out = []
    for p, q in zip(x.flat, y.flat):
        if isinstance(p, int) and isinstance(q, int):
            out.append(p == q)
        elif _analyzer.can_prove_equal(p, q):
            out.append(True)
        elif _provably_different(p, q):
            out.append(False)
        else:
            raise _NotEvaluable
    return [(np.array(out, dtype=bool).reshape(x.shape), "bool")]


def _provably_different(p, q) -> bool:
    """``p != q`` given that every symbol is a dimension (>= 0): torch's Expand exports compare
    the shape with -1 (``Where(Equal(shape, -1), 1, shape)``)."""
    exprs = [x if isinstance(x, prim.Expr) else tir.const(int(x), "int64") for x in (p, q)]
    symbols = {v.name: v for e in exprs for v in tir.analysis.undefined_vars(e)}
    with contextlib.ExitStack() as stack:
        for v in symbols.values():
            stack.enter_context(_analyzer.constraint_scope(v >= 0))
        return bool(_analyzer.can_prove(exprs[0] != exprs[1]))


def _compare(fn):
    # Comparisons of plain numbers (loop counters against trip limits: tf2onnx's while loops).
    def apply(a, d, attrs, opset):
        x, y = a[0], a[1]
        if _symbolic(x) or _symbolic(y):
            raise _NotEvaluable
        return [(fn(x, y), "bool")]

    return apply


RULES["Less"] = _compare(np.less)
RULES["LessOrEqual"] = _compare(np.less_equal)
RULES["Greater"] = _compare(np.greater)
RULES["GreaterOrEqual"] = _compare(np.greater_equal)
RULES["And"] = _compare(np.logical_and)
RULES["Or"] = _compare(np.logical_or)


@rule("Not")
def _not(a, d, attrs, opset):
    if _symbolic(a[0]):
        raise _NotEvaluable
    return [(np.logical_not(a[0]), "bool")]


@rule("Where")
def _where(a, d, attrs, opset):
    cond, x, y = a
    if _symbolic(cond):
        raise _NotEvaluable
    if _symbolic(x) or _symbolic(y):
        x, y = _obj(x), _obj(y)
    return [(np.where(cond, x, y), d[1])]


@rule("ConstantOfShape")
def _constant_of_shape(a, d, attrs, opset):
    from lepton_opt.targets.lower import DTYPES, KNOWN_EVAL_LIMIT

    shape = [int(s) for s in _numeric(a[0])]
    if int(np.prod(shape, dtype=np.int64)) > KNOWN_EVAL_LIMIT:
        raise _NotEvaluable
    value = attrs.get("value")
    fill = value.numpy().reshape(-1) if value is not None else np.zeros(1, np.float32)
    dtype = DTYPES.get(value.dtype) if value is not None else "float32"
    if dtype is None or dtype == "bfloat16":
        raise _NotEvaluable
    return [(np.full(shape, fill[0], dtype=fill.dtype), dtype)]


@rule("Range")
def _range(a, d, attrs, opset):
    start, limit, delta = (_numeric(x).item() for x in a)
    out = np.arange(start, limit, delta, dtype=a[0].dtype)
    if out.size > (1 << 16):
        raise _NotEvaluable
    return [(out, d[0])]


@rule("Expand")
def _expand(a, d, attrs, opset):
    shape = [int(s) for s in _numeric(a[1])]
    out_shape = np.broadcast_shapes(a[0].shape, tuple(shape))
    return [(np.broadcast_to(a[0], out_shape).copy(), d[0])]


@rule("ReduceProd")
def _reduce_prod(a, d, attrs, opset):
    data = a[0]
    if opset >= 18:
        axes = None if len(a) < 2 or a[1] is None else tuple(_axes(_numeric(a[1]), data.ndim))
    else:
        axes = tuple(_axes(attrs["axes"], data.ndim)) if "axes" in attrs else None
    keep = bool(attrs.get("keepdims", 1))
    if _symbolic(data):
        if axes not in (None, tuple(range(data.ndim))) or data.ndim != 1:
            raise _NotEvaluable
        out = np.array(_product(list(data.flat)), dtype=object)
        return [(out.reshape([1] * data.ndim) if keep else out, d[0])]
    return [(np.prod(data, axis=axes, keepdims=keep).astype(data.dtype), d[0])]
