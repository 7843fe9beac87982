"""fuse-attention: scaled dot-product attention with its head split/merge -> Attention (opset 23)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.models import transformer_layer
from tests.passes.fusion_helpers import fuse, ops, refusals

HEADS, HEAD_DIM, SEQ = 4, 8, 6
HIDDEN = HEADS * HEAD_DIM


def attention_model(batch=2, scaling="div", mask="add", extra_output=None, opset=17, extra_nodes=(),
                    extra_inputs=(), extra_outputs=(), seq=SEQ):
    """q, k, v [B, S, H*D] -> the torch-exported block -> y [B, S, H*D]; mask [B, 1, 1, S] float."""
    nodes = []
    inits = [numpy_helper.from_array(np.array([0, 0, HEADS, HEAD_DIM], np.int64), "split"),
             numpy_helper.from_array(np.array([0, 0, HIDDEN], np.int64), "merge"),
             numpy_helper.from_array(np.array(np.sqrt(HEAD_DIM) if scaling == "div" else 1 / np.sqrt(HEAD_DIM),
                                              np.float32), "scale")]
    for t, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("Reshape", [t, "split"], [f"{t}4"]),
                  helper.make_node("Transpose", [f"{t}4"], [f"{t}h"], perm=perm)]
    if scaling == "pre":  # torch's F.scaled_dot_product_attention export: sqrt(scale) on Q and on K^T
        inits.append(numpy_helper.from_array(np.array(HEAD_DIM ** -0.25, np.float32), "root"))
        nodes += [helper.make_node("Mul", ["qh", "root"], ["qs"]), helper.make_node("Mul", ["kh", "root"], ["ks"]),
                  helper.make_node("MatMul", ["qs", "ks"], ["scores"])]
    else:
        nodes.append(helper.make_node("MatMul", ["qh", "kh"], ["scores"]))
    last = "scores"
    if scaling in ("div", "mul"):
        nodes.append(helper.make_node("Div" if scaling == "div" else "Mul", [last, "scale"], ["scaled"]))
        last = "scaled"
    if mask == "add":
        nodes.append(helper.make_node("Add", [last, "mask"], ["masked"]))
        last = "masked"
    nodes += [helper.make_node("Softmax", [last], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "vh"], ["context"]),
              helper.make_node("Transpose", ["context"], ["merged"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["merged", "merge"], ["y"]), *extra_nodes]
    inputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, [batch, seq, HIDDEN]) for t in "qkv"]
    if mask == "add":
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, 1, 1, seq]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, HIDDEN])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "attention", inputs + list(extra_inputs), outputs + list(extra_outputs), inits)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


@pytest.mark.parametrize("scaling", ["div", "mul", "pre", "none"])
@pytest.mark.parametrize("mask", ["add", "none"])
def test_attention_block_fuses(scaling, mask):
    model = attention_model(scaling=scaling, mask=mask)
    after, rewrites = fuse(model, "fuse-attention", atol=1e-5)
    assert rewrites == 1
    kept = {op: n for op, n in ops(after).items() if op not in ("Constant", "Expand")}
    assert kept == {"Attention": 1}  # no Reshape / Transpose / MatMul / Softmax left
    node = next(n for n in after.graph.node if n.op_type == "Attention")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["q_num_heads"] == attrs["kv_num_heads"] == HEADS
    assert attrs["scale"] == pytest.approx(1 / np.sqrt(HEAD_DIM) if scaling != "none" else 1.0)
    assert after.opset_import[0].version == 23


def test_dynamic_batch():
    model = attention_model(batch="B")
    after, rewrites = fuse(model, "fuse-attention", shapes={"B": 3})
    assert rewrites == 1 and ops(after)["Attention"] == 1


def test_dynamic_sequence_expands_the_mask_at_run_time():
    model = attention_model(batch="B", seq="S")
    after, rewrites = fuse(model, "fuse-attention", shapes={"B": 2, "S": 5})
    assert rewrites == 1 and ops(after)["Attention"] == 1 and ops(after)["Shape"] == 1  # query length


def test_bare_4d_core_fuses():
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["p"], axis=3),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    shape = [2, HEADS, SEQ, HEAD_DIM]
    inputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, shape) for t in "qkv"]
    graph = helper.make_graph(nodes, "core", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(np.array(0.3, np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    after, rewrites = fuse(model, "fuse-attention")
    assert rewrites == 1 and ops(after) == {"Attention": 1}


def test_refuses_a_mask_broadcast_along_the_keys():
    # softmax(q k^T + m) with m of shape [B, 1, S, 1]: Attention's mask spans the key length.
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Add", ["s", "m"], ["sm"]),
             helper.make_node("Softmax", ["sm"], ["p"], axis=3),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    shape = [2, HEADS, SEQ, HEAD_DIM]
    inputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, shape) for t in "qkv"]
    inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [2, 1, SEQ, 1]))
    graph = helper.make_graph(nodes, "core", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    after, rewrites = fuse(model, "fuse-attention")
    assert rewrites == 0 and ops(after)["Softmax"] == 1
    assert any("last dim is not the key length" in r for r in refusals(model, "fuse-attention"))


def test_refuses_when_the_probabilities_are_also_an_output():
    model = attention_model(extra_output="probs")
    after, rewrites = fuse(model, "fuse-attention")
    assert rewrites == 0 and ops(after)["Softmax"] == 1
    assert any("other uses" in r for r in refusals(model, "fuse-attention"))


def test_refuses_when_a_head_split_has_another_use():
    model = attention_model(extra_nodes=[helper.make_node("Relu", ["qh"], ["z"])],
                            extra_outputs=[helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    assert fuse(model, "fuse-attention")[1] == 0
    assert any("other uses" in r for r in refusals(model, "fuse-attention"))


def test_refuses_when_the_opset_cannot_be_raised():
    # GridSample renamed its interpolation modes at opset 20: this model cannot go to 23.
    sample = helper.make_node("GridSample", ["img", "grid"], ["z"])
    extra_inputs = [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 1, 4, 4]),
                    helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, 2, 2, 2])]
    model = attention_model(extra_nodes=[sample], extra_inputs=extra_inputs,
                            extra_outputs=[helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 1, 2, 2])])
    assert fuse(model, "fuse-attention")[1] == 0
    assert any("cannot be raised" in r and "GridSample" in r for r in refusals(model, "fuse-attention"))


def test_transformer_layer_attention_fuses_after_shape_folding():
    model = transformer_layer(batch=2)
    after, _ = fuse(model, "fold-shapes", atol=0)
    after, rewrites = fuse(after, "fuse-attention")
    assert rewrites == 1 and ops(after)["Attention"] == 1 and ops(after)["Softmax"] == 0
