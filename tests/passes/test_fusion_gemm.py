"""fuse-gemm: MatMul + Add -> Gemm on 2-D operands; refusals."""

from __future__ import annotations

import pytest

from tests.passes.fusion_helpers import fuse, header, ops, parse, refusals, weight


def gemm_model(body: str, x="float[3,6] x", y="float[3,4] y", extra_out="", inits=None):
    return parse(f"""{header()}
    g ({x}) => ({y}{extra_out}) {{
        {body}
    }}""", inits if inits is not None else [weight("w", [6, 4]), weight("b", [4])])


@pytest.mark.parametrize("body", [
    "t = MatMul(x, w)\n y = Add(t, b)",
    "t = MatMul(x, w)\n y = Add(b, t)",
    "wt = Transpose <perm = [1, 0]> (w)\n t = MatMul(x, wt)\n y = Add(t, b)",
])
def test_matmul_add_becomes_gemm(body):
    inits = [weight("w", [4, 6] if "Transpose" in body else [6, 4]), weight("b", [4])]
    after, rewrites = fuse(gemm_model(body, inits=inits), "fuse-gemm")
    assert rewrites == 1 and ops(after) == {"Gemm": 1}


def test_refuses_3d_matmul():
    model = gemm_model("t = MatMul(x, w)\n y = Add(t, b)", x="float[2,3,6] x", y="float[2,3,4] y")
    assert fuse(model, "fuse-gemm")[1] == 0
    assert any("Rank of input_a and input_b must be 2" in r for r in refusals(model, "fuse-gemm"))


def test_refuses_an_add_that_broadcasts_the_product_larger():
    model = gemm_model("t = MatMul(x, w)\n y = Add(t, b)", y="float[2,3,4] y",
                       inits=[weight("w", [6, 4]), weight("b", [2, 3, 4])])
    assert fuse(model, "fuse-gemm")[1] == 0
    assert any("broadcasts beyond" in r for r in refusals(model, "fuse-gemm"))


def test_refuses_when_the_product_has_another_use():
    model = gemm_model("t = MatMul(x, w)\n y = Add(t, b)\n z = Relu(t)", extra_out=", float[3,4] z")
    assert fuse(model, "fuse-gemm")[1] == 0
    assert any("other uses" in r for r in refusals(model, "fuse-gemm"))


def test_shared_weight_is_read_not_rewritten():
    # Gemm reads the weight as it is, so another reader of it does not block the fusion.
    model = gemm_model("t = MatMul(x, w)\n y = Add(t, b)\n z = MatMul(x, w)", extra_out=", float[3,4] z")
    after, rewrites = fuse(model, "fuse-gemm")
    assert rewrites == 1 and ops(after) == {"Gemm": 1, "MatMul": 1}
    assert len(after.graph.initializer) == 2
