"""Converters for the ops the fusion passes produce (lepton_opt/targets/ops/fused.py) against
onnxruntime: one single-node model per case, compiled for the CPU."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import lepton_opt
from tests.models import ort_run

F, B = TensorProto.FLOAT, TensorProto.BOOL


def attention_model(q_shape, kv_shape, mask_shape=None, mask_type=F, **attrs):
    names = ["q", "k", "v"] + (["mask"] if mask_shape else [])
    inputs = [helper.make_tensor_value_info("q", F, q_shape), helper.make_tensor_value_info("k", F, kv_shape),
              helper.make_tensor_value_info("v", F, kv_shape)]
    if mask_shape:
        inputs.append(helper.make_tensor_value_info("mask", mask_type, mask_shape))
    node = helper.make_node("Attention", names, ["y"], **attrs)
    graph = helper.make_graph([node], "attention", inputs, [helper.make_tensor_value_info("y", F, None)])
    opsets = [helper.make_opsetid("", 23)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def feeds_for(model, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type == B:
            feeds[vi.name] = rng.random(shape) > 0.3
            feeds[vi.name][..., 0] = True  # no row fully masked
        elif vi.name == "mask":
            feeds[vi.name] = np.where(rng.random(shape) > 0.3, 0.0, -10000.0).astype(np.float32)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def check(model, atol=1e-5):
    feeds = feeds_for(model)
    expected = ort_run(model, feeds)
    got = lepton_opt.compile(model).run(feeds)
    np.testing.assert_allclose(got["y"], expected["y"], rtol=1e-4, atol=atol)


CASES = {
    "3-D, padding mask [B,1,S,S]": ((2, 6, 32), (2, 6, 32), (2, 1, 6, 6), F, dict(q_num_heads=4, kv_num_heads=4)),
    "3-D, scale, mask [S,S]": ((2, 6, 32), (2, 6, 32), (6, 6), F, dict(q_num_heads=4, kv_num_heads=4, scale=0.3)),
    "3-D, grouped-query": ((1, 5, 32), (1, 5, 16), None, F, dict(q_num_heads=4, kv_num_heads=2)),
    "4-D, no mask": ((2, 3, 5, 8), (2, 3, 7, 8), None, F, {}),
    "4-D, bool mask": ((2, 3, 5, 8), (2, 3, 5, 8), (2, 3, 5, 5), B, {}),
    "4-D, causal": ((1, 2, 6, 8), (1, 2, 6, 8), None, F, dict(is_causal=1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_attention(case):
    q, kv, mask, mask_type, attrs = CASES[case]
    check(attention_model(q, kv, mask, mask_type, **attrs))


def test_swish():
    node = helper.make_node("Swish", ["x"], ["y"], alpha=1.5)
    graph = helper.make_graph([node], "swish", [helper.make_tensor_value_info("x", F, [2, 3, 8])],
                              [helper.make_tensor_value_info("y", F, None)])
    check(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)], ir_version=10))


def test_cpu_pipeline_expands_attention_into_matmuls():
    # TVM has no CPU attention kernel; its legalized nn.attention is one PrimFunc our schedules
    # cannot tile, so the CPU pipeline expands it (the lowered module keeps the fused op).
    import onnx_ir as ir

    from lepton_opt.targets.compile import lower_model
    from lepton_opt.targets.ops.fused import expand_attention_pass

    model = attention_model((2, 6, 32), (2, 6, 32), (2, 1, 6, 6), F, q_num_heads=4, kv_num_heads=4)
    mod = lower_model(ir.serde.deserialize_model(model)).mod
    assert "R.nn.attention" in mod.script()
    expanded = expand_attention_pass(mod).script()
    assert "R.nn.attention" not in expanded and expanded.count("R.matmul") == 2 and "R.nn.softmax" in expanded


def single_node(op_type, inits, opset, **attrs):
    """x [2, 5, 16] and constant inputs ``inits`` -> op_type -> y."""
    from onnx import numpy_helper

    node = helper.make_node(op_type, ["x", *inits], ["y"], **attrs)
    graph = helper.make_graph([node], op_type, [helper.make_tensor_value_info("x", F, [2, 5, 16])],
                              [helper.make_tensor_value_info("y", F, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


@pytest.mark.parametrize("op_type, inits, opset, attrs", [
    ("RMSNormalization", {"w": np.linspace(0.5, 1.5, 16, dtype=np.float32)}, 23, {"epsilon": 1e-6}),
    ("LayerNormalization", {"w": np.linspace(0.5, 1.5, 16, dtype=np.float32)}, 17, {}),  # no bias
    ("Gelu", {}, 20, {"approximate": "tanh"}),
    ("Gelu", {}, 20, {}),
])
def test_other_fusion_outputs(op_type, inits, opset, attrs):
    check(single_node(op_type, inits, opset, **attrs), atol=1e-4)
