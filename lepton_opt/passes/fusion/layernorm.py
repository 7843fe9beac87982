"""LayerNorm and RMSNorm written out in elementwise ops -> ``LayerNormalization`` (opset 17) /
``RMSNormalization`` (opset 23).

    LayerNorm  d = x - mean(x);  d / sqrt(mean(d^2) + eps) * gamma + beta
    RMSNorm    x / sqrt(mean(x^2) + eps) * w

Variants spelled by the rules: d^2 as Pow(d, 2) or d * d; the division as Div, or as a Mul by
Reciprocal(sqrt) or by 1 / sqrt (torch's rsqrt), either order; with or without gamma / beta
(LayerNorm) or w (RMSNorm); ReduceMean with ``axes`` as an attribute (opset < 18) or an input.
The reduced axes must be the trailing axes, the same in both means, with keepdims; gamma and
beta must have the normalized shape (leading 1s allowed). The pass puts constant Add/Mul
operands second first, so gamma, beta and eps need only one operand order.

LayerNorm rules run in an earlier stage than RMSNorm rules: the lower half of a LayerNorm is an
RMSNorm of d, and the whole LayerNorm should win. (Where the LayerNorm is refused, e.g. its
mean has another use, that lower half may still become RMSNormalization(d): the same values.)
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase

from lepton_opt.passes.fusion.common import (
    FusionPass,
    constant,
    float_tensor,
    fresh_name,
    is_scalar,
    opset_allows,
    scalar,
)


def _mean(op, x, name):
    return op.ReduceMean(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=[name])


def _square(op, d, form):
    return op.Pow(d, 2.0) if form == "pow" else op.Mul(d, d)


def _normalize(op, d, std, form, one):
    if form == "div":
        return op.Div(d, std)
    if form == "mul-reciprocal":
        return op.Mul(d, op.Reciprocal(std))
    if form == "reciprocal-mul":
        return op.Mul(op.Reciprocal(std), d)
    if form == "mul-one-over":  # torch exports rsqrt(t) as 1 / sqrt(t)
        return op.Mul(d, op.Div(one, std))
    return op.Mul(op.Div(one, std), d)


def _reduced_axes(mean: ir.Value) -> list[int] | None:
    """The normalized axes of a ReduceMean with keepdims, as negative numbers, or None."""
    node = mean.producer()
    if node.attributes.get_int("keepdims", 1) != 1:
        return None
    x = node.inputs[0]
    if x is None or x.shape is None:
        return None
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = constant(node.inputs[1])
        if axes is None:
            return None
        axes = axes.reshape(-1).tolist()
    else:
        axes = node.attributes.get_ints("axes", None)
        if axes is None:
            return None
    rank = len(x.shape)
    normalized = sorted({a - rank if a >= 0 else a for a in axes})
    if not normalized or normalized != list(range(-len(normalized), 0)) or normalized[0] < -rank:
        return None
    return normalized


def _param(result: MatchResult, value: ir.Value | None, dims: list, what: str) -> np.ndarray | None:
    """A gamma/beta/w constant with the normalized shape (leading 1s allowed), as that shape."""
    if value is None:
        return None
    array = constant(value)
    if array is None:
        result.fail(f"{what} is not a constant")
        return None
    shape = list(array.shape)
    while len(shape) > len(dims) and shape[0] == 1:
        shape.pop(0)
    if shape != dims:
        result.fail(f"{what} of shape {list(array.shape)} is not the normalized shape {dims}")
        return None
    return array.reshape(dims)


class _NormBase(RewriteRuleClassBase):
    op_type = ""

    def _common_check(self, result, context, x, eps, means, params):
        axes = [_reduced_axes(m) for m in means]
        if axes[0] is None or any(a != axes[0] for a in axes):
            result.fail("the means do not reduce the same trailing axes with keepdims")
            return None
        if scalar(eps) is None:
            result.fail("epsilon is not a constant scalar")
            return None
        if not float_tensor(result, x, "the normalized input"):
            return None
        dims = list(x.shape)[axes[0][0]:]
        if not all(isinstance(d, int) for d in dims):
            result.fail("the normalized dims are not static")
            return None
        for value, what in params:
            if value is not None and _param(result, value, dims, what) is None:
                return None
            if value is not None and value.dtype != x.dtype:
                result.fail(f"{what} has another dtype than the input")
                return None
        if not opset_allows(result, context, self.op_type):
            return None
        return axes[0], dims

    @staticmethod
    def _constant(op, graph, array, base):
        return op.initializer(ir.tensor(np.ascontiguousarray(array)), fresh_name(graph, base))

    @classmethod
    def _shaped(cls, op, graph, weight, dims, suffix):
        """``weight`` as the normalized shape ``dims`` (a new initializer only if it differs)."""
        if list(constant(weight).shape) == dims:
            return weight
        return cls._constant(op, graph, constant(weight).reshape(dims), f"{weight.name}_{suffix}")


class LayerNormFusion(_NormBase):
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * gamma + beta -> LayerNormalization"""

    op_type = "LayerNormalization"

    def __init__(self, square: str, normalize: str, scale: bool, bias: bool):
        super().__init__(f"LayerNorm[{square}, {normalize}, {'gamma' if scale else 'no gamma'}, "
                         f"{'beta' if bias else 'no beta'}]")
        self.square, self.normalize, self.scale, self.bias = square, normalize, scale, bias

    def pattern(self, op, x, eps, gamma, beta, one):
        d = op.Sub(x, _mean(op, x, "mean"))
        var = _mean(op, _square(op, d, self.square), "var")
        y = _normalize(op, d, op.Sqrt(op.Add(var, eps)), self.normalize, one)
        if self.scale:
            y = op.Mul(y, gamma)
        if self.bias:
            y = op.Add(y, beta)
        return y

    def check(self, context, x, eps, mean, var, gamma=None, beta=None, one=None, **_) -> MatchResult:
        result = MatchResult()
        if one is not None and not is_scalar(one, 1.0):
            return result.fail("the reciprocal is not 1 / sqrt(...)")
        self._common_check(result, context, x, eps, [mean, var], [(gamma, "gamma"), (beta, "beta")])
        return result

    def rewrite(self, op, x, eps, mean, gamma=None, beta=None, **_):
        axes = _reduced_axes(mean)
        dims = list(x.shape)[axes[0]:]
        graph = mean.producer().graph
        scale = (self._constant(op, graph, np.ones(dims, x.dtype.numpy()), "layernorm_ones") if gamma is None
                 else self._shaped(op, graph, gamma, dims, "ln"))
        inputs = [x, scale] + ([] if beta is None else [self._shaped(op, graph, beta, dims, "ln")])
        return op.LayerNormalization(*inputs, axis=axes[0], epsilon=scalar(eps))


class RMSNormFusion(_NormBase):
    """x / sqrt(mean(x^2) + eps) * w -> RMSNormalization"""

    op_type = "RMSNormalization"

    def __init__(self, square: str, normalize: str, scale: bool):
        super().__init__(f"RMSNorm[{square}, {normalize}, {'w' if scale else 'no w'}]")
        self.square, self.normalize, self.scale = square, normalize, scale

    def pattern(self, op, x, eps, w, one):
        ms = _mean(op, _square(op, x, self.square), "ms")
        y = _normalize(op, x, op.Sqrt(op.Add(ms, eps)), self.normalize, one)
        return op.Mul(y, w) if self.scale else y

    def check(self, context, x, eps, ms, w=None, one=None, **_) -> MatchResult:
        result = MatchResult()
        if one is not None and not is_scalar(one, 1.0):
            return result.fail("the reciprocal is not 1 / sqrt(...)")
        self._common_check(result, context, x, eps, [ms], [(w, "w")])
        return result

    def rewrite(self, op, x, eps, ms, w=None, **_):
        axes = _reduced_axes(ms)
        dims = list(x.shape)[axes[0]:]
        graph = ms.producer().graph
        scale = (self._constant(op, graph, np.ones(dims, x.dtype.numpy()), "rmsnorm_ones") if w is None
                 else self._shaped(op, graph, w, dims, "rms"))
        return op.RMSNormalization(x, scale, axis=axes[0], epsilon=scalar(eps))


SQUARES = ("pow", "mul")
NORMALIZE = ("div", "mul-reciprocal", "reciprocal-mul", "mul-one-over", "one-over-mul")



def _layernorm_rules(variants):
    return [LayerNormFusion.rule(square, normalize, scale, bias)
            for scale, bias in variants for square, normalize in itertools.product(SQUARES, NORMALIZE)]


def _rmsnorm_rules(scale):
    return [RMSNormFusion.rule(square, normalize, scale) for square, normalize in itertools.product(SQUARES, NORMALIZE)]


# Rules fire at their last node, visited in graph order: a rule without beta would fire at the
# Mul by gamma before the rule with beta reaches the Add. So the longest variants get a stage
# of their own, ahead of the shorter ones; and LayerNorm ahead of RMSNorm.
STAGES = (
    _layernorm_rules([(True, True)]),
    _layernorm_rules([(True, False), (False, True)]),
    _layernorm_rules([(False, False)]),
    _rmsnorm_rules(True),
    _rmsnorm_rules(False),
)


class FuseLayerNorm(FusionPass):
    name = "fuse-layernorm"
    description = ("LayerNorm / RMSNorm arithmetic -> LayerNormalization (opset 17) / RMSNormalization "
                   "(opset 23; raises the model's opset when sound)")
    needs_shapes = True
    constants_second = True
    stages = STAGES
