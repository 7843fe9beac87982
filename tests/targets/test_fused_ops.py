"""Converters for the ops the fusion passes produce (lepton_opt/targets/ops/fused.py) against
onnxruntime: one single-node model per case, compiled for the CPU."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import lepton_opt
from tests.models import ort_run

F, B = TensorProto.FLOAT, TensorProto.BOOL


def attention_model(q_shape, kv_shape, mask_shape=None, mask_type=F, v_shape=None, **attrs):
    names = ["q", "k", "v"] + (["mask"] if mask_shape else [])
    inputs = [helper.make_tensor_value_info("q", F, q_shape), helper.make_tensor_value_info("k", F, kv_shape),
              helper.make_tensor_value_info("v", F, v_shape or kv_shape)]
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


# Shapes the fused CPU attention kernel takes (head size a multiple of 16, at least 4 queries;
# keys padded to whole vectors and queries to whole row blocks where they are not): numerics
# against onnxruntime, and the kernel really is the one built.
KERNEL_CASES = {
    "3-D, padding mask [B,1,S,L]": ((2, 16, 64), (2, 32, 64), (2, 1, 16, 32), F, dict(q_num_heads=2, kv_num_heads=2)),
    "3-D, mask [S,L], scale": ((1, 24, 64), (1, 16, 64), (24, 16), F, dict(q_num_heads=4, kv_num_heads=4, scale=0.2)),
    "4-D, no mask": ((1, 3, 8, 32), (1, 3, 48, 32), None, F, {}),
    "4-D, causal": ((1, 2, 16, 16), (1, 2, 16, 16), None, F, dict(is_causal=1)),
    "3-D, grouped-query": ((1, 8, 64), (1, 16, 32), None, F, dict(q_num_heads=4, kv_num_heads=2)),
    # Padded: ViT-S/16's 197 tokens (6 rows a block, 198 rows; 208 keys), odd lengths with a
    # mask read at the last real key / query, causal over padded queries and keys.
    "4-D, ViT's 197 tokens": ((1, 6, 197, 64), (1, 6, 197, 64), None, F, {}),
    "3-D, 9 queries, 21 keys, mask [B,1,S,L]": ((2, 9, 64), (2, 21, 64), (2, 1, 9, 21), F,
                                                 dict(q_num_heads=1, kv_num_heads=1)),
    "4-D, causal, 13 queries and keys": ((1, 2, 13, 32), (1, 2, 13, 32), None, F, dict(is_causal=1)),
    "4-D, 11 queries, 40 keys, mask [S,L]": ((1, 2, 11, 16), (1, 2, 40, 16), (11, 40), F, {}),
    "4-D, V's head size 32, Q/K's 16": ((2, 4, 8, 16), (2, 4, 8, 16), None, F, {}, (2, 4, 8, 32)),
}


def _cpu_kernels(model) -> dict[str, str]:
    """Kernel name -> the CPU schedule rule that takes it, for ``model`` after the -O2 passes."""
    import tvm

    from lepton_opt.targets import cpu_schedule
    from lepton_opt.targets.build import resolve_target
    from lepton_opt.targets.compile import lower_model

    target = resolve_target("llvm").tvm_target()
    with target:
        mod = tvm.transform.Sequential(cpu_schedule._pre_schedule_passes(target))(
            lower_model(lepton_opt.load(model)).mod)
    return {gv.name_hint: cpu_schedule.schedule_prim_func(f, target)[1] for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_attention_kernel(case):
    q, kv, mask, mask_type, attrs, *v_shape = KERNEL_CASES[case]
    model = attention_model(q, kv, mask, mask_type, *v_shape, **attrs)
    kernels = _cpu_kernels(model)
    assert [rule for name, rule in kernels.items() if name.startswith("attention")] == ["attention"], kernels
    assert not any("softmax" in name for name in kernels), kernels  # not the expansion
    check(model)


def test_attention_kernel_falls_back_to_the_expansion_where_it_does_not_apply():
    # 3 queries are fewer than a row block, 8-wide heads are shorter than a vector.
    for q, kv in (((1, 3, 64), (1, 20, 64)), ((1, 16, 32), (1, 16, 32))):
        heads = 1 if q[-1] == 64 else 4
        model = attention_model(q, kv, None, F, q_num_heads=heads, kv_num_heads=heads)
        kernels = _cpu_kernels(model)
        assert "attention" not in kernels.values() and any("softmax" in name for name in kernels), kernels
        check(model)


def test_swish():
    node = helper.make_node("Swish", ["x"], ["y"], alpha=1.5)
    graph = helper.make_graph([node], "swish", [helper.make_tensor_value_info("x", F, [2, 3, 8])],
                              [helper.make_tensor_value_info("y", F, None)])
    check(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)], ir_version=10))


def test_cpu_pipeline_expands_attention_into_matmuls():
    # TVM has no CPU attention kernel; its legalized nn.attention is one PrimFunc our schedules
    # cannot tile, so where lepton-opt's kernel does not apply (8-wide heads here) the CPU pipeline
    # expands it (the lowered module keeps the fused op).
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
