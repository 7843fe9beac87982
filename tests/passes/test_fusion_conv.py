"""fuse-conv: per-channel Mul/Add after Conv into weights/bias, zero Pad into Conv; refusals."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from tests.passes.fusion_helpers import fuse, header, ops, parse, refusals, weight


def const(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


PER_CHANNEL = {
    "[C,1,1]": const("c", np.linspace(0.5, 2, 4).reshape(4, 1, 1)),
    "[1,C,1,1]": const("c", np.linspace(-1, 1, 4).reshape(1, 4, 1, 1)),
    "scalar": const("c", 1.5),
}


def affine_model(tail: str, c, bias: bool = True, extra: str = "", extra_out: str = ""):
    inputs = "x, w, wb" if bias else "x, w"
    inits = [weight("w", [4, 3, 3, 3]), c] + ([weight("wb", [4])] if bias else [])
    return parse(f"""{header()}
    g (float[1,3,8,8] x) => (float[1,4,6,6] y{extra_out}) {{
        t = Conv ({inputs})
        {tail}
        {extra}
    }}""", inits)


@pytest.mark.parametrize("shape", list(PER_CHANNEL))
@pytest.mark.parametrize("tail", ["y = Mul(t, c)", "y = Mul(c, t)", "y = Add(t, c)", "y = Add(c, t)"])
def test_per_channel_affine_folds(tail, shape):
    after, rewrites = fuse(affine_model(tail, PER_CHANNEL[shape]), "fuse-conv")
    assert rewrites == 1 and ops(after) == {"Conv": 1}


def test_mul_then_add_both_fold_without_bias():
    model = parse(f"""{header()}
    g (float[1,3,8,8] x) => (float[1,4,6,6] y) {{
        t = Conv (x, w)
        u = Mul(t, s)
        y = Add(u, c)
    }}""", [weight("w", [4, 3, 3, 3]), const("s", np.linspace(0.5, 2, 4).reshape(4, 1, 1)),
            const("c", np.linspace(-1, 1, 4).reshape(4, 1, 1))])
    after, rewrites = fuse(model, "fuse-conv")
    assert rewrites == 2 and ops(after) == {"Conv": 1}


def test_refuses_a_constant_that_varies_spatially():
    model = affine_model("y = Mul(t, c)", const("c", np.linspace(0.5, 2, 6).reshape(1, 1, 1, 6)))
    assert fuse(model, "fuse-conv")[1] == 0
    assert any("channel axis only" in r for r in refusals(model, "fuse-conv"))


def test_refuses_a_shared_weight():
    model = affine_model("y = Mul(t, c)", PER_CHANNEL["[C,1,1]"], extra="z = Conv(x, w, wb)",
                         extra_out=", float[1,4,6,6] z")
    after, rewrites = fuse(model, "fuse-conv")
    assert rewrites == 0 and ops(after)["Mul"] == 1
    assert any("is shared with node" in r for r in refusals(model, "fuse-conv"))


def test_refuses_when_the_conv_output_has_another_use():
    model = affine_model("y = Add(t, c)", PER_CHANNEL["[C,1,1]"], extra="z = Relu(t)",
                         extra_out=", float[1,4,6,6] z")
    assert fuse(model, "fuse-conv")[1] == 0
    assert any("other uses" in r for r in refusals(model, "fuse-conv"))


def pad_model(pads, extra: str = "", extra_out: str = "", out="float[1,4,8,8]"):
    return parse(f"""{header()}
    g (float[1,3,8,8] x) => ({out} y{extra_out}) {{
        p = Constant <value = int64[8] {{{", ".join(map(str, pads))}}}> ()
        t = Pad (x, p)
        y = Conv <pads = [0, 1, 0, 1]> (t, w)
        {extra}
    }}""", [weight("w", [4, 3, 3, 3])])


def test_zero_pad_folds_into_conv():
    after, rewrites = fuse(pad_model([0, 0, 1, 0, 0, 0, 1, 0]), "fuse-conv")
    assert rewrites == 1 and ops(after) == {"Conv": 1}


def test_refuses_a_pad_of_the_batch_axis():
    model = pad_model([1, 0, 1, 0, 0, 0, 1, 0], out="float[2,4,8,8]")
    assert fuse(model, "fuse-conv")[1] == 0
    assert any("non-spatial" in r for r in refusals(model, "fuse-conv"))


def test_refuses_when_the_pad_output_has_another_use():
    model = pad_model([0, 0, 1, 0, 0, 0, 1, 0], extra="z = Relu(t)", extra_out=", float[1,3,10,8] z")
    assert fuse(model, "fuse-conv")[1] == 0
    assert any("other uses" in r for r in refusals(model, "fuse-conv"))


def conv_attrs(model) -> list[dict]:
    import onnx

    return [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            for n in model.graph.node if n.op_type == "Conv"]


def test_taps_that_read_only_padding_are_dropped():
    """DeepLabV3's ASPP: a 3x3 conv dilated 24 on a 16x16 map only ever reads its centre tap."""
    model = parse(f"""{header()}
    g (float[1,8,16,16] x) => (float[1,4,16,16] y, float[1,4,16,16] z) {{
        y = Conv <pads = [24, 24, 24, 24], dilations = [24, 24]> (x, w, b)
        z = Conv <pads = [4, 4, 4, 4], dilations = [4, 4]> (x, w, b)
    }}""", [weight("w", [4, 8, 3, 3]), weight("b", [4])])
    after, rewrites = fuse(model, "fuse-conv")
    assert rewrites == 1
    dropped, kept = conv_attrs(after)
    assert dropped["kernel_shape"] == [1, 1] and dropped["pads"] == [0, 0, 0, 0] and dropped["dilations"] == [1, 1]
    assert kept.get("kernel_shape", [3, 3]) == [3, 3] and kept["pads"] == [4, 4, 4, 4]  # every tap reads the input


def test_dead_taps_on_one_side_only():
    """A 1-D conv with 5 taps on a 2-long input, padded 4 left and 0 right: the first taps
    reach only into the left padding for some positions, the last ones always read the input."""
    model = parse(f"""{header()}
    g (float[1,3,2] x) => (float[1,2,2] y) {{
        y = Conv <pads = [4, 0]> (x, w)
    }}""", [weight("w", [2, 3, 5])])
    after, rewrites = fuse(model, "fuse-conv")
    assert rewrites == 1
    (attrs,) = conv_attrs(after)
    assert attrs["kernel_shape"] == [2] and attrs["pads"] == [1, 0]
