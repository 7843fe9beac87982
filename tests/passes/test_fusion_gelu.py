"""fuse-gelu: the erf and tanh GELU spellings -> Gelu (opset 20); refusals."""

from __future__ import annotations

import pytest

from tests.passes.fusion_helpers import fuse, header, ops, parse, refusals

CONSTANTS = """half = Constant <value = float {0.5}> ()
        one = Constant <value = float {1.0}> ()
        sqrt2 = Constant <value = float {1.4142135}> ()
        inv_sqrt2 = Constant <value = float {0.70710677}> ()
        c = Constant <value = float {0.7978846}> ()
        k = Constant <value = float {0.044715}> ()
        three = Constant <value = float {3.0}> ()"""

ERF = "e = Erf(d)\n f = Add(e, one)"
FORMS = {
    # torch's nn.GELU export (BERT): x * (1 + erf(x / sqrt2)) * 0.5
    "erf (x*f)*h": f"d = Div(x, sqrt2)\n {ERF}\n m = Mul(x, f)\n y = Mul(m, half)",
    "erf h*(x*f), 1+erf": "d = Div(x, sqrt2)\n e = Erf(d)\n f = Add(one, e)\n m = Mul(x, f)\n y = Mul(half, m)",
    "erf x*(h*f)": f"d = Div(x, sqrt2)\n {ERF}\n m = Mul(half, f)\n y = Mul(x, m)",
    "erf (x*h)*f, x*(1/sqrt2)": f"d = Mul(x, inv_sqrt2)\n {ERF}\n m = Mul(x, half)\n y = Mul(m, f)",
    "erf f*(h*x)": f"d = Div(x, sqrt2)\n {ERF}\n m = Mul(half, x)\n y = Mul(f, m)",
    "tanh pow (HF NewGELU)": """p = Pow(x, three)
        q = Mul(k, p)
        s = Add(x, q)
        u = Mul(c, s)
        t = Tanh(u)
        f = Add(one, t)
        m = Mul(half, x)
        y = Mul(m, f)""",
    "tanh x*x*x": """xx = Mul(x, x)
        p = Mul(xx, x)
        q = Mul(p, k)
        s = Add(q, x)
        u = Mul(s, c)
        t = Tanh(u)
        f = Add(t, one)
        m = Mul(x, f)
        y = Mul(m, half)""",
}


def gelu_model(body: str, opset: int = 17, extra: str = "", extra_out: str = "", inputs: str = ""):
    return parse(f"""{header(opset)}
    g (float[2,3,8] x{inputs}) => (float[2,3,8] y{extra_out}) {{
        {CONSTANTS}
        {body}
        {extra}
    }}""")


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("opset", [17, 20])
def test_gelu_forms_fuse(form, opset):
    model = gelu_model(FORMS[form], opset)
    after, rewrites = fuse(model, "fuse-gelu", atol=1e-5)
    assert rewrites == 1
    assert {op: n for op, n in ops(after).items() if op != "Constant"} == {"Gelu": 1}
    gelu = next(n for n in after.graph.node if n.op_type == "Gelu")
    approximate = [a.s.decode() for a in gelu.attribute if a.name == "approximate"]
    assert approximate == (["tanh"] if form.startswith("tanh") else [])
    assert after.opset_import[0].version == 20  # raised from 17: every other node keeps its meaning


def test_refuses_when_an_intermediate_has_another_use():
    model = gelu_model(FORMS["erf (x*f)*h"], extra="z = Relu(e)", extra_out=", float[2,3,8] z")
    after, rewrites = fuse(model, "fuse-gelu")
    assert rewrites == 0 and ops(after)["Erf"] == 1
    assert any("other uses" in r for r in refusals(model, "fuse-gelu"))


def test_refuses_a_wrong_constant():
    model = gelu_model(FORMS["erf (x*f)*h"].replace("Div(x, sqrt2)", "Div(x, three)"))
    assert fuse(model, "fuse-gelu")[1] == 0
    assert any("x / sqrt(2)" in r for r in refusals(model, "fuse-gelu"))


def test_refuses_when_the_opset_cannot_be_raised():
    # GridSample renamed its modes in opset 20: raising this model to 20 would change it.
    model = gelu_model(FORMS["erf (x*f)*h"], 17, inputs=", float[1,1,4,4] img, float[1,2,2,2] grid",
                       extra="z = GridSample(img, grid)", extra_out=", float[1,1,2,2] z")
    after, rewrites = fuse(model, "fuse-gelu")
    assert rewrites == 0 and after.opset_import[0].version == 17
    assert any("cannot be raised" in r and "GridSample" in r for r in refusals(model, "fuse-gelu"))


def test_raising_the_opset_converts_reduce_axes():
    # ReduceMean moved axes to an input at opset 18; the raise to 20 rewrites the node.
    model = gelu_model(FORMS["erf (x*f)*h"], 17, extra="r = ReduceMean <axes = [-1]> (y)\n z = Relu(r)",
                       extra_out=", float[2,3,1] z")
    after, rewrites = fuse(model, "fuse-gelu")
    assert rewrites == 1 and after.opset_import[0].version == 20
    reduce = next(n for n in after.graph.node if n.op_type == "ReduceMean")
    assert len(reduce.input) == 2 and not any(a.name == "axes" for a in reduce.attribute)
