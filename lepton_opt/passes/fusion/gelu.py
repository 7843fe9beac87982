"""GELU written out with Erf or Tanh -> the ONNX ``Gelu`` op (opset 20).

    erf form   0.5 * x * (1 + erf(x / sqrt(2)))                       -> Gelu(x)
    tanh form  0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))  -> Gelu(x, approximate="tanh")

Exporters spell the same math in many orders. The pass first puts the constant operand of
every Add/Mul second (meaning unchanged), so each rule below only spells the orders of the
non-constant operands: where the 0.5 is applied (to the product, to the (1 + ...) factor or to x),
x / sqrt(2) as a Div or as a Mul by 1/sqrt(2), and x^3 as Pow(x, 3), x * (x * x) or (x * x) * x.
Every constant is checked against its exact value (relative 1e-4). A model below opset 20 is
raised to 20 when its other nodes keep their meaning; otherwise the rule refuses and says why.
"""

from __future__ import annotations

import itertools
import math

from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase

from lepton_opt.passes.fusion.common import FusionPass, float_tensor, is_scalar, opset_allows

SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _cube(op, x, three, form):
    if form == "pow":
        return op.Pow(x, three)
    if form == "x*(x*x)":
        return op.Mul(x, op.Mul(x, x))
    return op.Mul(op.Mul(x, x), x)


def _factor(op, x, c, c2, three, core, order):
    """The (1 + erf(...)) or (1 + tanh(...)) factor."""
    if core == "erf/div":
        inner = op.Erf(op.Div(x, c))
    elif core == "erf/mul":
        inner = op.Erf(op.Mul(x, c))
    else:  # tanh: sqrt(2/pi) * (x + 0.044715 * x^3), the sum in either order
        cubic = op.Mul(_cube(op, x, three, core.split("/")[1]), c2)
        total = op.Add(x, cubic) if order else op.Add(cubic, x)
        inner = op.Tanh(op.Mul(total, c))
    return op.Add(inner, 1.0)


OUTER_FORMS = (
    "(x*f)*h", "(f*x)*h",   # 0.5 applied to the product
    "x*(f*h)", "(f*h)*x",   # 0.5 applied to the factor
    "(x*h)*f", "f*(x*h)",   # 0.5 applied to x
)
CORES = ("erf/div", "erf/mul", "tanh/pow", "tanh/x*(x*x)", "tanh/(x*x)*x")


class GeluFusion(RewriteRuleClassBase):
    """0.5 * x * (1 + erf(x / sqrt(2))) -> Gelu(x); the tanh form -> Gelu(x, approximate="tanh")"""

    def __init__(self, core: str, outer: str, order: bool):
        super().__init__(f"Gelu[{core}, {outer}{'' if order else ', sum swapped'}]")
        self.core, self.outer, self.order = core, outer, order

    def pattern(self, op, x, c, c2, three, half):
        f = _factor(op, x, c, c2, three, self.core, self.order)
        return {
            "(x*f)*h": lambda: op.Mul(op.Mul(x, f), half),
            "(f*x)*h": lambda: op.Mul(op.Mul(f, x), half),
            "x*(f*h)": lambda: op.Mul(x, op.Mul(f, half)),
            "(f*h)*x": lambda: op.Mul(op.Mul(f, half), x),
            "(x*h)*f": lambda: op.Mul(op.Mul(x, half), f),
            "f*(x*h)": lambda: op.Mul(f, op.Mul(x, half)),
        }[self.outer]()

    def check(self, context, x, c, c2, three, half, **_) -> MatchResult:
        result = MatchResult()
        if not is_scalar(half, 0.5):
            return result.fail("the factor is not 0.5")
        if self.core == "erf/div" and not is_scalar(c, SQRT_2):
            return result.fail("the Erf argument is not x / sqrt(2)")
        if self.core == "erf/mul" and not is_scalar(c, 1 / SQRT_2):
            return result.fail("the Erf argument is not x * (1 / sqrt(2))")
        if self.core.startswith("tanh"):
            if not is_scalar(c, SQRT_2_OVER_PI) or not is_scalar(c2, 0.044715):
                return result.fail("the Tanh argument is not sqrt(2/pi) * (x + 0.044715 x^3)")
            if self.core == "tanh/pow" and not is_scalar(three, 3.0):
                return result.fail("the power is not 3")
        if not float_tensor(result, x, "the GELU input"):
            return result
        opset_allows(result, context, "Gelu")
        return result

    def rewrite(self, op, x, **_):
        if self.core.startswith("tanh"):
            return op.Gelu(x, approximate="tanh")
        return op.Gelu(x)


# 0.5 and 1 in the pattern are matched as constants by the pattern itself (1.0 literal); the
# rest are variables checked above, so that float32-rounded spellings match.
RULES = [
    GeluFusion.rule(core, outer, order)
    for core, outer, order in itertools.product(CORES, OUTER_FORMS, (True, False))
    if order or core.startswith("tanh")
]


class FuseGelu(FusionPass):
    name = "fuse-gelu"
    description = "GELU from Erf or Tanh arithmetic -> Gelu (opset 20; raises the model's opset when sound)"
    constants_second = True
    stages = (RULES,)
