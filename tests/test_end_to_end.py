"""Whole models compiled for CPU and compared with onnxruntime (max abs error <= 1e-4, fp32).

The models are built in ``tests/models.py`` the way torch exports them: a ResNet-style CNN with
BatchNorm and residuals, a MobileNet-style CNN, and a transformer encoder layer (decomposed
LayerNorm or LayerNormalization, Erf GELU, attention with Softmax and a padding mask), each
with a static and a dynamic batch dimension.
"""

from __future__ import annotations

import numpy as np
import pytest

import lepton_opt
from tests.models import mobilenet_block_cnn, random_inputs, resnet_cnn, transformer_layer, ort_run

ATOL = 1e-4

CASES = {
    "resnet-static": lambda: resnet_cnn(batch=2),
    "resnet-dynamic": lambda: resnet_cnn(batch="N"),
    "mobilenet-static": lambda: mobilenet_block_cnn(batch=1),
    "mobilenet-dynamic": lambda: mobilenet_block_cnn(batch="N"),
    "transformer-decomposed-static": lambda: transformer_layer(batch=2, layernorm="decomposed"),
    "transformer-decomposed-dynamic": lambda: transformer_layer(batch="N", layernorm="decomposed"),
    "transformer-fused-dynamic-floatmask": lambda: transformer_layer(
        batch="N", layernorm="fused", mask_dtype="float", mask_value=float(np.finfo(np.float32).min)),
}


def _assert_matches(compiled, model, feeds):
    expected = ort_run(model, feeds)
    got = compiled.run(feeds)
    assert list(got) == [o.name for o in model.graph.output]
    for name, ref in expected.items():
        assert got[name].shape == ref.shape, name
        assert got[name].dtype == ref.dtype, name
        np.testing.assert_allclose(got[name], ref, rtol=0, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_model_matches_onnxruntime(case):
    model = CASES[case]()
    compiled = lepton_opt.compile(model, target="llvm")
    if case.endswith("static"):
        _assert_matches(compiled, model, random_inputs(model, seed=0))
    else:
        # One compiled module serves several batch sizes.
        for batch in (1, 3):
            _assert_matches(compiled, model, random_inputs(model, seed=batch, shapes={"N": batch}))


def test_input_shapes_fix_dynamic_batch():
    model = resnet_cnn(batch="N")
    compiled = lepton_opt.compile(model, input_shapes={"input": [4, 3, 32, 32]})
    assert compiled.inputs[0]["shape"] == [4, 3, 32, 32]
    _assert_matches(compiled, model, random_inputs(model, seed=1, shapes={"N": 4}))


def test_bundled_example_compiles_and_matches(tmp_path):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "mobilenet_tiny.onnx"
    before = path.read_bytes()
    compiled = lepton_opt.compile(str(path))
    report = lepton_opt.verify(compiled, str(path), seed=0)
    assert report.ok, report
    assert path.read_bytes() == before  # the user's model is never modified


def _torch_expand_model():
    """``cls.expand(x.size(0), -1, -1)`` as torch exports it with a dynamic batch:
    ``Where(Equal(shape, -1), ones, shape)`` feeding Expand, then Concat with the tokens."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal((1, 1, 8)).astype(np.float32), "cls"),
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array([0], np.int64), "axes0"),
            numpy_helper.from_array(np.array([-1, -1], np.int64), "minus_ones"),
            numpy_helper.from_array(np.array([-1], np.int64), "flat"),
            numpy_helper.from_array(np.array(-1, np.int64), "neg")]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_ones"], ["target"], axis=0),
        helper.make_node("Reshape", ["target", "flat"], ["target_flat"]),
        helper.make_node("Shape", ["target_flat"], ["target_len"]),
        helper.make_node("ConstantOfShape", ["target_len"], ["ones"],
                         value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("Mul", ["ones", "neg"], ["neg_ones"]),
        helper.make_node("Equal", ["target_flat", "neg_ones"], ["is_neg"]),
        helper.make_node("Where", ["is_neg", "ones", "target_flat"], ["expand_shape"]),
        helper.make_node("Expand", ["cls", "expand_shape"], ["cls_b"]),
        helper.make_node("Concat", ["cls_b", "x"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_torch_expand_pattern_with_dynamic_batch():
    model = _torch_expand_model()
    compiled = lepton_opt.compile(model)
    for batch in (1, 4):
        _assert_matches(compiled, model, random_inputs(model, seed=batch, shapes={"N": batch}))
