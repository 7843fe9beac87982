"""-O2 with the fusions on torch-style exported models: what is left, and that the compiled
model still matches onnxruntime on the original model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import lepton_opt
from lepton_opt.passes.registry import FUSIONS, PIPELINES
from lepton_opt.targets.compile import lower_model
from tests.models import ort_run, random_inputs, resnet_cnn, transformer_layer
from tests.passes.common import ops


def test_o2_runs_every_fusion():
    assert set(FUSIONS) <= set(PIPELINES["O2"])


@pytest.mark.parametrize("batch", [2, "N"])
def test_transformer_layer(batch):
    model = transformer_layer(batch=batch)  # decomposed LayerNorm, erf GELU, masked attention
    result = lepton_opt.optimize(model, "O2", verify_each=True)
    optimized = result.model
    onnx.checker.check_model(optimized, full_check=True)
    found = ops(optimized)
    assert found["LayerNormalization"] == 2 and found["Gelu"] == 1 and found["Attention"] == 1
    assert not {"Softmax", "Erf", "ReduceMean", "Transpose", "BatchNormalization"} & set(found)
    assert optimized.opset_import[0].version == 23
    # Attention lowers to Relax's fused attention, not to its pieces.
    lowered = lower_model(result.ir_model).mod
    assert "R.nn.attention" in lowered.script() and "R.nn.softmax" not in lowered.script()

    compiled = lepton_opt.compile(model)
    assert set(FUSIONS) <= set(compiled.manifest["passes"])
    for seed, n in ((0, 2), (1, 3)) if batch == "N" else ((0, batch),):
        feeds = random_inputs(model, seed=seed, shapes={"N": n})
        expected, fused_ort, got = ort_run(model, feeds), ort_run(optimized, feeds), compiled.run(feeds)
        np.testing.assert_allclose(fused_ort["y"], expected["y"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(got["y"], expected["y"], rtol=0, atol=1e-4)


def test_resnet_cnn():
    model = resnet_cnn(batch=2)
    result = lepton_opt.optimize(model, "O2", verify_each=True)
    onnx.checker.check_model(result.model, full_check=True)
    found = ops(result.model)
    assert found["BatchNormalization"] == 0 and found["Conv"] == 6
    compiled = lepton_opt.compile(model)
    feeds = random_inputs(model, seed=0)
    np.testing.assert_allclose(compiled.run(feeds)["logits"], ort_run(model, feeds)["logits"], rtol=0, atol=1e-4)
