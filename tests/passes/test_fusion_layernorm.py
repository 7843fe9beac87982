"""fuse-layernorm: LayerNorm / RMSNorm arithmetic -> LayerNormalization / RMSNormalization."""

from __future__ import annotations

import pytest

from tests.passes.fusion_helpers import fuse, header, ops, parse, refusals, weight


def mean(out: str, x: str, opset: int) -> str:
    if opset >= 18:
        return f"{out} = ReduceMean({x}, axes)"
    return f"{out} = ReduceMean <axes = [-1]> ({x})"


def layernorm_body(opset=17, square="pow", normalize="div", gamma=True, beta=True) -> str:
    lines = [mean("mu", "x", opset), "d = Sub(x, mu)",
             "sq = Pow(d, two)" if square == "pow" else "sq = Mul(d, d)", mean("var", "sq", opset),
             "ve = Add(var, eps)", "std = Sqrt(ve)"]
    lines += ["n = Div(d, std)"] if normalize == "div" else ["r = Reciprocal(std)", "n = Mul(d, r)"]
    last = "n"
    if gamma:
        lines.append("ng = Mul(gamma, n)")  # constant first: the pass puts it second
        last = "ng"
    lines.append(f"y = Add({last}, beta)" if beta else f"y = Identity({last})")
    return "\n        ".join(lines)


def norm_model(body: str, opset=17, extra="", extra_out="", shape="[2,5,16]"):
    return parse(f"""{header(opset)}
    g (float{shape} x) => (float{shape} y{extra_out}) {{
        axes = Constant <value = int64[1] {{-1}}> ()
        two = Constant <value = float {{2.0}}> ()
        eps = Constant <value = float {{1e-5}}> ()
        {body}
        {extra}
    }}""", [weight("gamma", [16], low=0.5), weight("beta", [16])])


def fused_ops(model):
    return {op: n for op, n in ops(model).items() if op not in ("Constant", "Identity")}


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("square, normalize", [("pow", "div"), ("mul", "reciprocal")])
def test_layernorm_fuses(opset, square, normalize):
    model = norm_model(layernorm_body(opset, square, normalize), opset)
    after, rewrites = fuse(model, "fuse-layernorm", atol=1e-4)
    assert rewrites == 1 and fused_ops(after) == {"LayerNormalization": 1}
    node = next(n for n in after.graph.node if n.op_type == "LayerNormalization")
    assert len(node.input) == 3  # gamma and beta inside the op
    assert after.opset_import[0].version == max(opset, 17)


@pytest.mark.parametrize("gamma, beta", [(True, False), (False, True), (False, False)])
def test_layernorm_without_gamma_or_beta(gamma, beta):
    model = norm_model(layernorm_body(gamma=gamma, beta=beta))
    after, rewrites = fuse(model, "fuse-layernorm", atol=1e-4)
    assert rewrites == 1 and fused_ops(after) == {"LayerNormalization": 1}


def test_layernorm_refuses_when_the_mean_has_another_use():
    model = norm_model(layernorm_body(), extra="z = Relu(mu)", extra_out=", float[2,5,1] z")
    after, _ = fuse(model, "fuse-layernorm")
    # The LayerNorm is refused; its lower half, d / sqrt(mean(d^2) + eps) * gamma, is an RMSNorm
    # of d = x - mean and may still fuse as one (same values).
    assert ops(after)["LayerNormalization"] == 0 and ops(after)["ReduceMean"] >= 1
    assert any("other uses" in r for r in refusals(model, "fuse-layernorm"))


def test_layernorm_refuses_different_axes():
    body = layernorm_body(18).replace("var = ReduceMean(sq, axes)", "var = ReduceMean(sq, axes1)")
    model = norm_model("axes1 = Constant <value = int64[1] {1}> ()\n        " + body, 18)
    assert fuse(model, "fuse-layernorm")[1] == 0
    assert any("same trailing axes" in r for r in refusals(model, "fuse-layernorm"))


def test_layernorm_leaves_out_a_gamma_of_another_shape():
    model = parse(f"""{header()}
    g (float[2,5,16] x) => (float[2,5,16] y) {{
        two = Constant <value = float {{2.0}}> ()
        eps = Constant <value = float {{1e-5}}> ()
        {layernorm_body(17)}
    }}""", [weight("gamma", [5, 16], low=0.5), weight("beta", [16])])
    after, _ = fuse(model, "fuse-layernorm")
    # A [5, 16] gamma cannot go into the op: a plain LayerNormalization, then Mul and Add.
    assert fused_ops(after) == {"LayerNormalization": 1, "Mul": 1, "Add": 1}
    assert any("not the normalized shape" in r for r in refusals(model, "fuse-layernorm"))


def rms_body(opset=23, square="pow", normalize="div") -> str:
    lines = ["sq = Pow(x, two)" if square == "pow" else "sq = Mul(x, x)", mean("ms", "sq", opset),
             "me = Add(ms, eps)", "r = Sqrt(me)"]
    lines += {"div": ["n = Div(x, r)"], "reciprocal": ["rr = Reciprocal(r)", "n = Mul(rr, x)"],
              # torch's export of x * torch.rsqrt(t): x * (1 / sqrt(t))
              "one-over": ["one = Constant <value = float {1.0}> ()", "rr = Div(one, r)", "n = Mul(x, rr)"]}[normalize]
    lines.append("y = Mul(n, gamma)")
    return "\n        ".join(lines)


@pytest.mark.parametrize("opset", [17, 23])
@pytest.mark.parametrize("square, normalize", [("pow", "div"), ("mul", "reciprocal"), ("pow", "one-over")])
def test_rmsnorm_fuses(opset, square, normalize):
    model = norm_model(rms_body(opset, square, normalize), opset)
    after, rewrites = fuse(model, "fuse-layernorm", atol=1e-4)
    assert rewrites == 1 and fused_ops(after) == {"RMSNormalization": 1}
    assert after.opset_import[0].version == 23


def test_rmsnorm_refuses_when_an_intermediate_has_another_use():
    model = norm_model(rms_body(), 23, extra="z = Relu(ms)", extra_out=", float[2,5,1] z")
    assert fuse(model, "fuse-layernorm")[1] == 0
    assert any("other uses" in r for r in refusals(model, "fuse-layernorm"))
