"""fuse-activations: HardSigmoid / HardSwish spelled out -> the op; SiLU -> Swish only at opset 24."""

from __future__ import annotations

import pytest

from tests.passes.fusion_helpers import fuse, header, ops, parse, refusals

CONSTANTS = """three = Constant <value = float {3.0}> ()
        six = Constant <value = float {6.0}> ()
        sixth = Constant <value = float {0.16666667}> ()
        half = Constant <value = float {0.5}> ()
        zero = Constant <value = float {0.0}> ()
        one = Constant <value = float {1.0}> ()"""

FORMS = {
    # torch F.hardswish decomposed: x * relu6(x + 3) / 6
    "HardSwish: x*clip(x+3,0,6)/6": (
        "HardSwish", "a = Add(x, three)\n c = Clip(a, zero, six)\n m = Mul(x, c)\n y = Div(m, six)"),
    "HardSwish: clip*x*(1/6)": (
        "HardSwish", "a = Add(three, x)\n c = Clip(a, zero, six)\n m = Mul(c, x)\n y = Mul(m, sixth)"),
    "HardSwish: x*clip(x+3,0,6)/6 as x*hardsigmoid": (
        "HardSwish", "a = Add(x, three)\n c = Clip(a, zero, six)\n h = Div(c, six)\n y = Mul(x, h)"),
    "HardSigmoid: clip(x/6+0.5,0,1)": ("HardSigmoid", "d = Div(x, six)\n a = Add(d, half)\n y = Clip(a, zero, one)"),
    "HardSigmoid: clip(x*(1/6)+0.5,0,1)": (
        "HardSigmoid", "d = Mul(sixth, x)\n a = Add(d, half)\n y = Clip(a, zero, one)"),
    "HardSigmoid: clip(x+3,0,6)/6": ("HardSigmoid", "a = Add(x, three)\n c = Clip(a, zero, six)\n y = Div(c, six)"),
    "HardSwish: x*HardSigmoid(x)": (
        "HardSwish", "h = HardSigmoid <alpha = 0.16666667, beta = 0.5> (x)\n y = Mul(h, x)"),
}


def model(body: str, opset: int = 17, extra: str = "", extra_out: str = ""):
    return parse(f"""{header(opset)}
    g (float[2,3,8] x) => (float[2,3,8] y{extra_out}) {{
        {CONSTANTS}
        {body}
        {extra}
    }}""")


def fused_ops(m):
    return {op: n for op, n in ops(m).items() if op != "Constant"}


@pytest.mark.parametrize("form", list(FORMS))
def test_activation_forms_fuse(form):
    op, body = FORMS[form]
    after, rewrites = fuse(model(body), "fuse-activations", atol=1e-5)
    assert rewrites >= 1 and fused_ops(after) == {op: 1}


def test_clip_bounds_as_attributes_before_opset_11():
    body = "d = Div(x, six)\n a = Add(d, half)\n y = Clip <min = 0.0, max = 1.0> (a)"
    after, rewrites = fuse(model(body, opset=10), "fuse-activations")
    assert fused_ops(after) == {"HardSigmoid": 1}


def test_refuses_other_clip_bounds():
    m = model("a = Add(x, three)\n c = Clip(a, zero, one)\n y = Div(c, six)")
    assert fuse(m, "fuse-activations")[1] == 0
    assert any("Clip bounds" in r for r in refusals(m, "fuse-activations"))


def test_refuses_when_an_intermediate_has_another_use():
    m = model(FORMS["HardSwish: x*clip(x+3,0,6)/6"][1], extra="z = Relu(c)", extra_out=", float[2,3,8] z")
    after, _ = fuse(m, "fuse-activations")
    assert ops(after)["HardSwish"] == 0 and ops(after)["Clip"] == 1
    assert any("other uses" in r for r in refusals(m, "fuse-activations"))


def test_silu_becomes_swish_only_at_opset_24():
    body = "s = Sigmoid(x)\n y = Mul(x, s)"
    after, rewrites = fuse(model(body, opset=17), "fuse-activations")
    assert rewrites == 0 and fused_ops(after) == {"Sigmoid": 1, "Mul": 1}
    assert any("Swish needs opset 24" in r for r in refusals(model(body, opset=17), "fuse-activations"))
    after, rewrites = fuse(model(body, opset=24), "fuse-activations")
    assert rewrites == 1 and fused_ops(after) == {"Swish": 1}
