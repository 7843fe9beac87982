"""fold-batchnorm: BN into Conv / ConvTranspose / Gemm / 2-D MatMul; refusals."""

from __future__ import annotations

import pytest

from tests.passes.fusion_helpers import fuse, header, ops, parse, refusals, weight


def bn_params(c: int):
    return [weight("s", [c], low=0.5), weight("b", [c]), weight("m", [c]), weight("v", [c], low=0.5)]


CASES = {
    "Conv": ("float[1,3,8,8] x", "float[1,4,8,8] y",
             "t = Conv <pads = [1, 1, 1, 1]> (x, w, wb)", [weight("w", [4, 3, 3, 3]), weight("wb", [4])]),
    "Conv(no bias)": ("float[1,3,8,8] x", "float[1,4,6,6] y", "t = Conv (x, w)", [weight("w", [4, 3, 3, 3])]),
    "ConvTranspose(group 2)": ("float[1,4,5,5] x", "float[1,4,7,7] y", "t = ConvTranspose <group = 2> (x, w, wb)",
                               [weight("w", [4, 2, 3, 3]), weight("wb", [4])]),
    "Gemm(transB)": ("float[2,6] x", "float[2,4] y", "t = Gemm <transB = 1, beta = 0.5> (x, w, wb)",
                     [weight("w", [4, 6]), weight("wb", [4])]),
    "MatMul": ("float[2,6] x", "float[2,4] y", "t = MatMul (x, w)", [weight("w", [6, 4])]),
}


def bn_model(case: str, extra: str = "", extra_out: str = ""):
    x, y, producer, inits = CASES[case]
    return parse(f"""{header()}
    g ({x}) => ({y}{extra_out}) {{
        {producer}
        y = BatchNormalization <epsilon = 0.001> (t, s, b, m, v)
        {extra}
    }}""", inits + bn_params(4))


@pytest.mark.parametrize("case", list(CASES))
def test_batchnorm_folds(case):
    model = bn_model(case)
    op = case.split("(")[0]
    after, rewrites = fuse(model, "fold-batchnorm")
    assert rewrites == 1
    assert ops(after)["BatchNormalization"] == 0
    assert ops(after)["Gemm" if op == "MatMul" else op] == 1
    assert sum(ops(after).values()) == 1
    assert len(after.graph.initializer) <= 2  # folded weight and bias; BN statistics dropped


def test_refuses_a_shared_weight():
    model = parse(f"""{header()}
    g (float[1,3,8,8] x) => (float[1,4,6,6] y, float[1,4,6,6] z) {{
        t = Conv (x, w)
        y = BatchNormalization (t, s, b, m, v)
        z = Conv (x, w)
    }}""", [weight("w", [4, 3, 3, 3])] + bn_params(4))
    after, rewrites = fuse(model, "fold-batchnorm")
    assert rewrites == 0 and ops(after)["BatchNormalization"] == 1
    assert any("used by another node" in r for r in refusals(model, "fold-batchnorm"))


def test_refuses_a_shared_matmul_weight():
    model = parse(f"""{header()}
    g (float[2,6] x) => (float[2,4] y, float[2,4] z) {{
        t = MatMul (x, w)
        y = BatchNormalization (t, s, b, m, v)
        z = MatMul (x, w)
    }}""", [weight("w", [6, 4])] + bn_params(4))
    assert fuse(model, "fold-batchnorm")[1] == 0
    assert any("is shared with node" in r for r in refusals(model, "fold-batchnorm"))


@pytest.mark.parametrize("case", ["Conv", "MatMul"])
def test_refuses_when_the_conv_output_has_another_use(case):
    y_type = CASES[case][1].split()[0]
    model = bn_model(case, extra="z = Relu(t)", extra_out=f", {y_type} z")
    after, rewrites = fuse(model, "fold-batchnorm")
    assert rewrites == 0 and ops(after)["BatchNormalization"] == 1
    assert any("other uses" in r for r in refusals(model, "fold-batchnorm"))


def test_refuses_matmul_on_3d_input():
    model = parse(f"""{header()}
    g (float[2,4,6] x) => (float[2,4,4] y) {{
        t = MatMul (x, w)
        y = BatchNormalization (t, s, b, m, v)
    }}""", [weight("w", [6, 4])] + bn_params(4))
    assert fuse(model, "fold-batchnorm")[1] == 0
    assert any("not 2-D" in r for r in refusals(model, "fold-batchnorm"))
