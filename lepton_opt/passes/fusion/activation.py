"""HardSigmoid / HardSwish / SiLU written out -> the single op.

    clip(a * x + b, 0, 1)           -> HardSigmoid(x, alpha=a, beta=b)   (also x / d + b)
    clip(x + b, 0, m) / m           -> HardSigmoid(x, alpha=1/m, beta=b/m)  (also * (1/m))
    x * clip(x + 3, 0, 6) / 6       -> HardSwish(x)                     (also * (1/6))
    x * HardSigmoid(x, 1/6, 0.5)    -> HardSwish(x)                     (opset 14)
    x * Sigmoid(x)                  -> Swish(x)                          (only at opset >= 24)

SiLU: ONNX has no SiLU op; ``Swish`` (alpha=1 is SiLU) arrived in opset 24. We fuse into it
only when the model already imports opset 24: raising a model to 24 for one node would make
it unloadable by runtimes older than that opset, and x * Sigmoid(x) already fuses into one
kernel in every backend, so the raise buys nothing.

Clip bounds may be inputs (opset >= 11) or attributes (older); both are read. Stages: first
the whole x * clip(x + 3, 0, 6) / 6 (its clip feeds the Mul, so no HardSigmoid rule sees it),
then the HardSigmoid forms, then x * HardSigmoid(x), which also picks up the HardSigmoids the
second stage just made out of x * (clip(x + 3, 0, 6) / 6).
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase

from lepton_opt.passes.fusion.common import FusionPass, float_tensor, is_scalar, opset_allows, scalar
from lepton_opt.passes.fusion.opset import model_opset

SWISH_OPSET = 24


def _clip(op, t):
    return op.Clip(t, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["clip_out"])


def _clip_bounds(clip_out: ir.Value, opset: int) -> tuple[float, float] | None:
    node = clip_out.producer()
    if opset < 11:
        return node.attributes.get_float("min", -math.inf), node.attributes.get_float("max", math.inf)
    bounds = []
    for i, default in ((1, -math.inf), (2, math.inf)):
        if len(node.inputs) > i and node.inputs[i] is not None:
            value = scalar(node.inputs[i])
            if value is None:
                return None
            bounds.append(value)
        else:
            bounds.append(default)
    return bounds[0], bounds[1]


def _bounds_are(result: MatchResult, context, clip_out, lo: float, hi: float) -> bool:
    bounds = _clip_bounds(clip_out, model_opset(context.model))
    if bounds is None or not (math.isclose(bounds[0], lo, abs_tol=1e-6) and math.isclose(bounds[1], hi, rel_tol=1e-4)):
        result.fail(f"Clip bounds are {bounds}, not ({lo:g}, {hi:g})")
        return False
    return True


class HardSwishFromClip(RewriteRuleClassBase):
    """x * clip(x + 3, 0, 6) / 6 -> HardSwish(x)   (the Mul in either order; / 6 or * (1/6))"""

    def __init__(self, swapped: bool, divide: bool):
        super().__init__(f"HardSwish[clip{', swapped' if swapped else ''}, {'/ 6' if divide else '* 1/6'}]")
        self.swapped, self.divide = swapped, divide

    def pattern(self, op, x, three, six):
        clip = _clip(op, op.Add(x, three))
        product = op.Mul(clip, x) if self.swapped else op.Mul(x, clip)
        return op.Div(product, six) if self.divide else op.Mul(product, six)

    def check(self, context, x, three, six, clip_out) -> MatchResult:
        result = MatchResult()
        if not is_scalar(three, 3.0) or not is_scalar(six, 6.0 if self.divide else 1 / 6):
            return result.fail("constants are not x + 3 and / 6")
        if not _bounds_are(result, context, clip_out, 0.0, 6.0) or not float_tensor(result, x, "input"):
            return result
        opset_allows(result, context, "HardSwish")
        return result

    def rewrite(self, op, x, **_):
        return op.HardSwish(x)


class HardSigmoidFromAffine(RewriteRuleClassBase):
    """clip(x * a + b, 0, 1) -> HardSigmoid(alpha=a, beta=b)   (x / d + b: alpha = 1/d)"""

    def __init__(self, divide: bool):
        super().__init__(f"HardSigmoid[affine {'/' if divide else '*'}]")
        self.divide = divide

    def pattern(self, op, x, a, b):
        return _clip(op, op.Add(op.Div(x, a) if self.divide else op.Mul(x, a), b))

    def check(self, context, x, a, b, clip_out) -> MatchResult:
        result = MatchResult()
        if scalar(a) is None or scalar(b) is None or scalar(a) == 0:
            return result.fail("slope and offset are not constant scalars")
        if _bounds_are(result, context, clip_out, 0.0, 1.0):
            float_tensor(result, x, "input")
        return result

    def rewrite(self, op, x, a, b, **_):
        alpha = 1.0 / scalar(a) if self.divide else scalar(a)
        return op.HardSigmoid(x, alpha=alpha, beta=scalar(b))


class HardSigmoidFromShiftedClip(RewriteRuleClassBase):
    """clip(x + b, 0, m) / m -> HardSigmoid(alpha=1/m, beta=b/m)   (or * (1/m))"""

    def __init__(self, divide: bool):
        super().__init__(f"HardSigmoid[shifted clip {'/' if divide else '*'}]")
        self.divide = divide

    def pattern(self, op, x, b, m):
        clip = _clip(op, op.Add(x, b))
        return op.Div(clip, m) if self.divide else op.Mul(clip, m)

    def check(self, context, x, b, m, clip_out) -> MatchResult:
        result = MatchResult()
        if scalar(b) is None or not scalar(m):
            return result.fail("shift and scale are not constant scalars")
        top = scalar(m) if self.divide else 1.0 / scalar(m)
        if _bounds_are(result, context, clip_out, 0.0, top):
            float_tensor(result, x, "input")
        return result

    def rewrite(self, op, x, b, m, **_):
        top = scalar(m) if self.divide else 1.0 / scalar(m)
        return op.HardSigmoid(x, alpha=1.0 / top, beta=scalar(b) / top)


class HardSwishFromHardSigmoid(RewriteRuleClassBase):
    """x * HardSigmoid(x, alpha=1/6, beta=0.5) -> HardSwish(x)"""

    def __init__(self, swapped: bool):
        super().__init__(f"HardSwish[hardsigmoid{', swapped' if swapped else ''}]")
        self.swapped = swapped

    def pattern(self, op, x):
        gate = op.HardSigmoid(x, _allow_other_attributes=True, _outputs=["gate"])
        return op.Mul(gate, x) if self.swapped else op.Mul(x, gate)

    def check(self, context, x, gate) -> MatchResult:
        result = MatchResult()
        node = gate.producer()
        if not (math.isclose(node.attributes.get_float("alpha", 0.2), 1 / 6, rel_tol=1e-4)
                and math.isclose(node.attributes.get_float("beta", 0.5), 0.5, rel_tol=1e-4)):
            return result.fail("HardSigmoid is not the one of HardSwish (alpha 1/6, beta 0.5)")
        opset_allows(result, context, "HardSwish")
        return result

    def rewrite(self, op, x, gate):
        return op.HardSwish(x)


class SwishFromSigmoid(RewriteRuleClassBase):
    """x * Sigmoid(x) -> Swish(x)   (opset >= 24 only, see the module docstring)"""

    def __init__(self, swapped: bool):
        super().__init__(f"Swish[{'swapped' if swapped else 'x * sigmoid'}]")
        self.swapped = swapped

    def pattern(self, op, x):
        gate = op.Sigmoid(x)
        return op.Mul(gate, x) if self.swapped else op.Mul(x, gate)

    def check(self, context, x) -> MatchResult:
        result = MatchResult()
        if model_opset(context.model) < SWISH_OPSET:
            return result.fail(f"SiLU stays x * Sigmoid(x): Swish needs opset {SWISH_OPSET} and the model "
                               f"imports {model_opset(context.model)} (not raised for this)")
        float_tensor(result, x, "input")
        return result

    def rewrite(self, op, x):
        return op.Swish(x)


STAGES = (
    [HardSwishFromClip.rule(swapped, divide) for swapped in (False, True) for divide in (True, False)],
    [HardSigmoidFromShiftedClip.rule(True), HardSigmoidFromShiftedClip.rule(False),
     HardSigmoidFromAffine.rule(True), HardSigmoidFromAffine.rule(False)],
    [HardSwishFromHardSigmoid.rule(False), HardSwishFromHardSigmoid.rule(True),
     SwishFromSigmoid.rule(False), SwishFromSigmoid.rule(True)],
)


class FuseActivations(FusionPass):
    name = "fuse-activations"
    description = "HardSigmoid / HardSwish arithmetic -> the single op; SiLU -> Swish at opset >= 24"
    constants_second = True
    stages = STAGES
