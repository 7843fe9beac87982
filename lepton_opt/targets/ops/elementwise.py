"""Elementwise converters: unary math, binary arithmetic and comparisons, activations."""

from __future__ import annotations

import math

from tvm import relax

from lepton_opt.targets.lower import LoweringError, dtype_of

op = relax.op


def scalar(x: relax.Expr, value: float) -> relax.Expr:
    """A constant of ``x``'s dtype (broadcasts against it)."""
    return relax.const(value, dtype_of(x))


LOW_FLOATS = ("float16", "bfloat16")


def in_float32(ctx, x: relax.Expr, fn) -> relax.Expr:
    """``fn(x)`` computed in float32 when ``x`` is float16/bfloat16, rounded back once: for
    sums and averages, whose running total would lose precision (or overflow) in the low type."""
    dt = dtype_of(x)
    if dt not in LOW_FLOATS:
        return fn(x)
    return relax.op.astype(ctx.emit(fn(ctx.emit(relax.op.astype(x, "float32")))), dt)


def _is_float(x: relax.Expr) -> bool:
    return dtype_of(x).startswith(("float", "bfloat"))


def _unary(fn):
    return lambda ctx, x: fn(x)


def _binary(fn):
    def convert(ctx, a, b, *, broadcast=0, axis=None, consumed_inputs=None):
        # Opset < 7: with broadcast=1 and axis, b's dims line up with a's from ``axis`` on.
        if broadcast and axis is not None:
            ra, rb = len(ctx.shape_of(a)), len(ctx.shape_of(b))
            ax = axis + ra if axis < 0 else axis
            if ra - ax > rb:
                b = ctx.emit(op.reshape(b, ctx.shape_of(b) + [1] * (ra - ax - rb)))
        return fn(a, b)

    return convert


def Div(ctx, a, b):
    if _is_float(a):
        return op.divide(a, b)
    # ONNX integer division truncates toward zero; Relax's floor_divide rounds down.
    q = op.floor_divide(a, b)
    r = op.subtract(a, op.multiply(q, b))
    fix = op.logical_and(op.not_equal(r, scalar(a, 0)),
                         # (bool != bool miscompiles to a float compare in TVM 0.27: use xor)
                         op.logical_xor(op.less(a, scalar(a, 0)), op.less(b, scalar(b, 0))))
    return op.where(fix, op.add(q, scalar(a, 1)), q) if dtype_of(a).startswith("int") else q


def Mod(ctx, a, b, *, fmod=0):
    if fmod:
        # C fmod: the result takes the dividend's sign; fmod(finite, +-inf) is the dividend.
        out = op.subtract(a, op.multiply(op.trunc(op.divide(a, b)) if _is_float(a) else Div(ctx, a, b), b))
        if _is_float(a):
            out = op.where(ctx.emit(op.logical_and(op.isinf(b), op.logical_not(op.isinf(a)))), a, ctx.emit(out))
        return out
    if _is_float(a):
        # floor_mod spelled a - floor(a / b) * b gives NaN for an infinite divisor; numpy (and
        # onnxruntime) give a when a and b share a sign (or a is 0), else b.
        out = ctx.emit(op.floor_mod(a, b))
        same = op.logical_or(op.equal(a, scalar(a, 0)),
                             op.logical_not(op.logical_xor(op.less(a, scalar(a, 0)), op.less(b, scalar(b, 0)))))
        fix = op.logical_and(op.isinf(b), op.logical_not(op.isinf(a)))
        return op.where(ctx.emit(fix), ctx.emit(op.where(ctx.emit(same), a, b)), out)
    return op.floor_mod(a, b)


def Pow(ctx, x, y):
    if dtype_of(y) != dtype_of(x):
        y = op.astype(y, dtype_of(x))
    known = ctx.known(1)
    if known is not None and not known.is_symbolic and known.array.size == 1:
        exponent = float(known.array.reshape(-1)[0])
        if exponent == 2.0:
            return op.multiply(x, x)  # exact and far cheaper than pow()
        if exponent == 1.0:
            return x
        if exponent == 0.5 and _is_float(x):
            return op.sqrt(x)
    if not _is_float(x):
        return op.astype(op.power(op.astype(x, "float64"), op.astype(y, "float64")), dtype_of(x))
    return op.power(x, y)


def _variadic(fn):
    def convert(ctx, *xs):
        xs = [x for x in xs if x is not None]
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return convert


def Mean(ctx, *xs):
    return op.divide(_variadic(op.add)(ctx, *xs), scalar(xs[0], len([x for x in xs if x is not None])))


def Relu(ctx, x):
    # The CPU pipeline makes a float relu keep NaN, as onnxruntime's does (see cpu_schedule).
    return op.nn.relu(x) if _is_float(x) else op.maximum(x, scalar(x, 0))


def LeakyRelu(ctx, x, *, alpha=0.01):
    return op.nn.leakyrelu(x, alpha)


def PRelu(ctx, x, slope):
    xd, sd = ctx.shape_of(x), ctx.shape_of(slope)
    if len(sd) == 1 and len(xd) > 2 and sd[0] == xd[1] and sd[0] != xd[-1]:
        slope = ctx.emit(op.reshape(slope, [sd[0]] + [1] * (len(xd) - 2)))  # one slope per channel
    return op.where(op.less(x, scalar(x, 0)), op.multiply(x, slope), x)


def Elu(ctx, x, *, alpha=1.0):
    return op.where(op.less(x, scalar(x, 0)), op.multiply(scalar(x, alpha), op.subtract(op.exp(x), scalar(x, 1))), x)


def Celu(ctx, x, *, alpha=1.0):
    neg = op.multiply(scalar(x, alpha), op.subtract(op.exp(op.divide(x, scalar(x, alpha))), scalar(x, 1)))
    return op.add(op.maximum(x, scalar(x, 0)), op.minimum(scalar(x, 0), neg))


def Selu(ctx, x, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    neg = op.multiply(scalar(x, alpha), op.subtract(op.exp(x), scalar(x, 1)))
    return op.multiply(scalar(x, gamma), op.where(op.greater(x, scalar(x, 0)), x, neg))


def ThresholdedRelu(ctx, x, *, alpha=1.0):
    return op.where(op.greater(x, scalar(x, alpha)), x, scalar(x, 0))


def HardSigmoid(ctx, x, *, alpha=0.2, beta=0.5):
    return op.clip(op.add(op.multiply(x, scalar(x, alpha)), scalar(x, beta)), 0.0, 1.0)


def HardSwish(ctx, x):
    return op.multiply(x, HardSigmoid(ctx, x, alpha=1.0 / 6.0, beta=0.5))


def Softplus(ctx, x):
    # log(1 + exp(x)) without overflow for large x.
    return op.add(op.maximum(x, scalar(x, 0)), op.log(op.add(op.exp(op.negative(op.abs(x))), scalar(x, 1))))


def Softsign(ctx, x):
    return op.divide(x, op.add(op.abs(x), scalar(x, 1)))


def Mish(ctx, x):
    return op.multiply(x, op.tanh(Softplus(ctx, x)))


def Gelu(ctx, x, *, approximate="none"):
    # In float32 for low-precision inputs: x^3 of the tanh form leaves float16 at |x| > 40, and
    # CPUs without float16 arithmetic would convert after each of the pieces.
    return in_float32(ctx, x, lambda t: _gelu(ctx, t, approximate))


def _gelu(ctx, x, approximate):
    if approximate == "tanh":
        inner = op.multiply(scalar(x, math.sqrt(2 / math.pi)),
                            op.add(x, op.multiply(scalar(x, 0.044715), op.multiply(x, op.multiply(x, x)))))
        return op.multiply(op.multiply(scalar(x, 0.5), x), op.add(scalar(x, 1), op.tanh(inner)))
    scaled = op.multiply(x, scalar(x, 1 / math.sqrt(2)))
    return op.multiply(op.multiply(scalar(x, 0.5), x), op.add(scalar(x, 1), fast_erf(ctx, scaled)))


def fast_erf(ctx, x: relax.Expr) -> relax.Expr:
    """erf(x): TVM's rational approximation (topi.fast_erf, within 4e-7 of erf over float32) for
    float32, which vectorizes and fuses into the producer's epilogue; ``relax.op.erf`` becomes a
    scalar libm call per element on CPU (measured: the GELU epilogue of BERT-base's first
    feed-forward matmul spent most of its time there). Other dtypes keep ``relax.op.erf``."""
    x = ctx.emit(x)
    if dtype_of(x) != "float32":
        return op.erf(x)
    from tvm import topi

    return ctx.bb.call_te(topi.fast_erf, x, primfunc_name_hint="fast_erf")


def Clip(ctx, x, min_in=None, max_in=None, **attrs):
    if ctx.opset < 11:
        lo, hi = attrs.get("min", -math.inf), attrs.get("max", math.inf)
        return op.clip(x, lo, hi)
    out = x
    if min_in is not None:
        out = op.maximum(out, min_in)
    if max_in is not None:
        out = op.minimum(out, max_in)
    return out


def Shrink(ctx, x, *, bias=0.0, lambd=0.5):
    return op.where(op.less(x, scalar(x, -lambd)), op.add(x, scalar(x, bias)),
                    op.where(op.greater(x, scalar(x, lambd)), op.subtract(x, scalar(x, bias)), scalar(x, 0)))


def Sign(ctx, x):
    return op.sign(x)


def IsNaN(ctx, x):
    return op.isnan(x)


def IsInf(ctx, x, *, detect_negative=1, detect_positive=1):
    inf = op.isinf(x)
    if not detect_negative:
        inf = op.logical_and(inf, op.greater(x, scalar(x, 0)))
    if not detect_positive:
        inf = op.logical_and(inf, op.less(x, scalar(x, 0)))
    return inf


def Round(ctx, x):
    return op.round(x)  # round-half-to-even, as ONNX


def Where(ctx, cond, x, y):
    return op.where(cond, x, y)


def Not(ctx, x):
    return op.logical_not(x)


def BitShift(ctx, x, y, *, direction):
    if direction == "LEFT":
        return op.left_shift(x, y)
    if direction == "RIGHT":
        return op.right_shift(x, y)
    raise LoweringError(f"BitShift direction {direction!r} is not LEFT or RIGHT")


def Sum(ctx, *xs):
    return _variadic(op.add)(ctx, *xs)


CONVERTERS = {
    # unary math
    "Abs": _unary(op.abs), "Neg": _unary(op.negative), "Exp": _unary(op.exp), "Log": _unary(op.log),
    "Sqrt": _unary(op.sqrt), "Floor": _unary(op.floor), "Ceil": _unary(op.ceil), "Erf": fast_erf,
    "Reciprocal": lambda ctx, x: op.divide(scalar(x, 1), x), "Sigmoid": _unary(op.sigmoid),
    "Tanh": _unary(op.tanh), "Sin": _unary(op.sin), "Cos": _unary(op.cos), "Tan": _unary(op.tan),
    "Asin": _unary(op.asin), "Acos": _unary(op.acos), "Atan": _unary(op.atan), "Sinh": lambda ctx, x: op.multiply(op.subtract(op.exp(x), op.exp(op.negative(x))), scalar(x, 0.5)),
    "Cosh": lambda ctx, x: op.multiply(op.add(op.exp(x), op.exp(op.negative(x))), scalar(x, 0.5)), "Asinh": _unary(op.asinh), "Acosh": _unary(op.acosh),
    "Atanh": _unary(op.atanh), "Sign": Sign, "Round": Round, "IsNaN": IsNaN, "IsInf": IsInf, "Not": Not,
    "BitwiseNot": _unary(op.bitwise_not),
    # binary arithmetic and logic
    "Add": _binary(op.add), "Sub": _binary(op.subtract), "Mul": _binary(op.multiply), "Div": Div,
    "Pow": Pow, "Mod": Mod, "Max": _variadic(op.maximum), "Min": _variadic(op.minimum), "Sum": Sum,
    "Mean": Mean, "Equal": _binary(op.equal), "Less": _binary(op.less), "Greater": _binary(op.greater),
    "LessOrEqual": _binary(op.less_equal), "GreaterOrEqual": _binary(op.greater_equal),
    "And": _binary(op.logical_and), "Or": _binary(op.logical_or), "Xor": _binary(op.logical_xor),
    "BitwiseAnd": _binary(op.bitwise_and), "BitwiseOr": _binary(op.bitwise_or),
    "BitwiseXor": _binary(op.bitwise_xor), "BitShift": BitShift, "Where": Where,
    # activations
    "Relu": Relu, "LeakyRelu": LeakyRelu, "PRelu": PRelu, "Elu": Elu, "Celu": Celu, "Selu": Selu,
    "ThresholdedRelu": ThresholdedRelu, "HardSigmoid": HardSigmoid, "HardSwish": HardSwish,
    "Softplus": Softplus, "Softsign": Softsign, "Mish": Mish, "Gelu": Gelu, "Clip": Clip, "Shrink": Shrink,
}
