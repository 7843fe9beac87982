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
