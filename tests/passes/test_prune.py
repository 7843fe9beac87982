"""Pruning: channel (structure rewired), magnitude, 2:4, the sensitivity scan and the CLI.

Channel pruning is checked exactly: removed channels reach the outputs only through the weights
of the layers that read them, so the pruned model must equal the original with those input rows
zeroed ("masked"), to float rounding. Every pruned model must pass onnx.checker and run in
onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_opt
from lepton_opt.errors import InputError, OptionError
from lepton_opt.passes.prune import channels as channel_pruning
from lepton_opt.passes.prune import check_two_four
from tests.models import mobilenet_block_cnn, ort_run, random_inputs, resnet_cnn, transformer_layer
from tests.test_cli import assert_user_error, lepton


def _masked_original(model: onnx.ModelProto, pruned: lepton_opt.passes.prune.PruneResult) -> onnx.ModelProto:
    """``model`` with the consumer weight rows of every removed channel set to zero."""
    from lepton_opt.passes.prune import _with_shapes

    ir_model = ir.serde.deserialize_model(_with_shapes(model))
    analysis = channel_pruning.analyze(ir_model)
    sizes = {g.root: g.size for g in analysis.groups}
    after = {row.name: row.shape_after[0] for row in pruned.layers}
    plan = {}
    for g in analysis.groups:
        name = "+".join(g.producers[:3]) + (f"+{len(g.producers) - 3} more" if len(g.producers) > 3 else "")
        if name in after:
            plan[g.root] = 1 - after[name] / sizes[g.root]
    kept = channel_pruning.keep_indices(analysis, plan)
    for sl in analysis.slices:
        if sl.role != "consumer":
            continue
        index = channel_pruning.channel_index(sl.layout, analysis.space_root, kept)
        if index is None:
            continue
        array = sl.value.const_value.numpy().copy()
        removed = np.setdiff1d(np.arange(array.shape[sl.axis]), index)
        array[(slice(None),) * sl.axis + (removed,)] = 0
        sl.value.const_value = ir.tensor(array, name=sl.value.name)
    return ir.serde.serialize_model(ir_model)


def _concat_cnn() -> onnx.ModelProto:
    """Two conv branches concatenated on channels, then BN, ReLU, a 1x1 conv, flatten, Gemm."""
    rng = np.random.default_rng(4)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    inits = [init("w_a", 8, 3, 3, 3), init("b_a", 8), init("w_b", 12, 3, 1, 1), init("w_c", 16, 20, 1, 1),
             init("bn_s", 20), init("bn_b", 20), init("bn_m", 20),
             numpy_helper.from_array(rng.uniform(0.5, 2, 20).astype(np.float32), "bn_v"),
             init("w_fc", 16 * 4 * 4, 10), init("b_fc", 10)]
    nodes = [
        helper.make_node("Conv", ["x", "w_a", "b_a"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("Conv", ["x", "w_b"], ["b"], name="conv_b"),
        helper.make_node("Concat", ["a", "b"], ["ab"], axis=1, name="concat"),
        helper.make_node("BatchNormalization", ["ab", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w_c"], ["c"], name="conv_c"),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w_fc"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "b_fc"], ["y"], name="fc_bias"),
    ]
    graph = helper.make_graph(nodes, "concat_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CHANNEL_MODELS = {
    "residual": (resnet_cnn, {"conv_0+conv_2", "conv_1", "conv_3", "conv_4+conv_5"}),
    "depthwise_se": (mobilenet_block_cnn, {"conv_0+conv_3", "conv_1", "conv_4+conv_7", "conv_6"}),
    "concat_flatten": (_concat_cnn, {"conv_a", "conv_b", "conv_c"}),
    "transformer_ffn": (transformer_layer, {"matmul_6"}),
}


@pytest.mark.parametrize("name", list(CHANNEL_MODELS))
def test_channel_pruning_removes_channels_and_equals_the_masked_original(name):
    make, groups = CHANNEL_MODELS[name]
    model = make()
    result = lepton_opt.prune(model, "channel", 0.3, channel_multiple=1)
    assert {row.name for row in result.layers} == groups
    for row in result.layers:  # round(0.3 * C) channels removed from every group
        assert row.shape_before[0] - row.shape_after[0] == round(0.3 * row.shape_before[0])
    assert result.params_after < result.params_before and result.nonzero_after <= result.params_after
    onnx.checker.check_model(result.model, full_check=True)
    feeds = random_inputs(model, seed=1)
    pruned = ort_run(result.model, feeds)
    masked = ort_run(_masked_original(model, result), feeds)
    original = ort_run(model, feeds)
    for out in original:
        assert pruned[out].shape == original[out].shape
        np.testing.assert_allclose(pruned[out], masked[out], rtol=1e-4, atol=1e-5)
    assert any(not np.allclose(pruned[o], original[o], atol=1e-6) for o in original)  # something was removed


def test_channel_counts_are_rounded_to_the_channel_multiple():
    result = lepton_opt.prune(transformer_layer(), "channel", 0.3)  # FFN 256 wide: keep 179.2 -> 176
    (row,) = result.layers
    assert row.shape_after == [176] and result.achieved == pytest.approx(80 / 256)
    cnn = lepton_opt.prune(resnet_cnn(), "channel", 0.3, channel_multiple=8)
    assert sorted((r.shape_before[0], r.shape_after[0]) for r in cnn.layers) == [(16, 8), (16, 8), (32, 24),
                                                                                (32, 24)]


def test_channel_pruning_keeps_residual_groups_consistent_and_dynamic_batch_runs():
    model = resnet_cnn(batch="N")
    result = lepton_opt.prune(model, "channel", 0.5, channel_multiple=1)
    weights = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    by_node = {n.name: n for n in result.model.graph.node}
    # conv_0 and conv_2 feed the same residual Add: both keep the same number of channels,
    # and the block's convs read exactly that many.
    out0 = weights[by_node["conv_0"].input[1]].shape[0]
    assert weights[by_node["conv_2"].input[1]].shape[0] == out0 == 8
    assert weights[by_node["conv_1"].input[1]].shape[1] == out0
    outputs = ort_run(result.model, random_inputs(model, shapes={"N": 3}))
    assert outputs["logits"].shape == (3, 10)


def test_channel_pruning_leaves_alone_what_it_cannot_follow():
    model = resnet_cnn()
    shared = helper.make_node("Transpose", ["relu_0"], ["t"], perm=[0, 2, 3, 1], name="odd_transpose")
    model.graph.node.append(shared)
    model.graph.output.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, None))
    result = lepton_opt.prune(model, "channel", 0.3)
    skipped = dict(result.skipped)
    assert "Transpose node 'odd_transpose'" in skipped["conv_0+conv_2"]
    assert "conv_0+conv_2" not in {row.name for row in result.layers}
    ort_run(result.model, random_inputs(model))


def test_shared_weight_is_not_pruned():
    model = resnet_cnn()
    # conv_3 and a new conv share conv_3's weight: neither may be changed.
    conv3 = next(n for n in model.graph.node if n.name == "conv_3")
    twin = helper.make_node("Conv", [conv3.input[0], conv3.input[1]], ["twin"], name="twin",
                            strides=[2, 2], pads=[1, 1, 1, 1])
    model.graph.node.append(twin)
    model.graph.output.append(helper.make_tensor_value_info("twin", TensorProto.FLOAT, None))
    result = lepton_opt.prune(model, "channel", 0.3)
    assert "conv_3" not in {row.name for row in result.layers}
    before = {i.name: i.dims for i in model.graph.initializer}
    after = {i.name: i.dims for i in result.model.graph.initializer}
    assert after[conv3.input[1]] == before[conv3.input[1]]
    magnitude = lepton_opt.prune(model, "magnitude", 0.5, scope="layer")
    assert conv3.name not in {row.name for row in magnitude.layers}


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_hits_the_requested_sparsity_exactly(scope):
    model = resnet_cnn()
    result = lepton_opt.prune(model, "magnitude", 0.6, scope=scope)
    zeros = total = 0
    weights = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    nodes = {n.name: n for n in result.model.graph.node}
    for row in result.layers:
        w = weights[nodes[row.name].input[1]]
        zeros += int((w == 0).sum())
        total += w.size
        if scope == "layer":
            assert (w == 0).sum() == round(0.6 * w.size)
    if scope == "global":
        assert zeros == round(0.6 * total)
    assert result.achieved == pytest.approx(zeros / total) and abs(result.achieved - 0.6) < 1e-3
    assert result.compressed_after < 0.7 * result.compressed_before
    assert "no speed-up" not in result.hardware and "do not speed up dense kernels" in result.hardware
    ort_run(result.model, random_inputs(model))


def test_two_four_pattern_on_every_eligible_weight():
    model = mobilenet_block_cnn()
    result = lepton_opt.prune(model, "2:4")
    weights = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    nodes = {n.name: n for n in result.model.graph.node}
    assert check_two_four(result.model) and set(check_two_four(result.model).values()) == {0}
    for row in result.layers:
        node = nodes[row.name]
        w = weights[node.input[1]]
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        axis = {"Conv": 1, "ConvTranspose": 0}.get(node.op_type, 1 if trans_b else 0)
        groups = np.moveaxis(w, axis, -1).reshape(-1, 4)
        assert ((groups == 0).sum(axis=1) == 2).all(), row.name  # exactly 2 zeros in each group of 4
    skipped = dict(result.skipped)
    assert skipped["conv_0"] == "reduction axis of 3 is not a multiple of 4"
    assert "tensor cores" in result.hardware
    ort_run(result.model, random_inputs(model))


def test_sensitivity_scan_respects_a_max_error_budget():
    model = resnet_cnn()
    result = lepton_opt.prune(model, "channel", max_error=0.05, samples=4)
    assert result.scan is not None and result.scan.ratios and result.scan.achieved <= 0.05
    assert all(0 < r <= 0.9 for r in result.scan.ratios.values())
    # Measured independently on the same seeded inputs the scan used.
    from lepton_opt.evaluation.accuracy import random_feeds

    errors = []
    for seed in range(4):
        feeds = random_feeds([{"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32"}], seed)
        ref, got = ort_run(model, feeds)["logits"], ort_run(result.model, feeds)["logits"]
        errors.append((np.abs(ref - got).max(), np.abs(ref).max()))
    worst = max(e for e, _ in errors) / max(s for _, s in errors)
    assert worst <= 0.05 + 1e-6 and worst == pytest.approx(result.scan.achieved, rel=1e-3)


def test_sensitivity_scan_respects_an_accuracy_budget(tmp_path):
    model = resnet_cnn(batch="N")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3, 32, 32)).astype(np.float32)
    labels = ort_run(model, {"input": x})["logits"].argmax(1)  # the original model is 100% right
    result = lepton_opt.prune(model, "magnitude", 0.9, max_accuracy_drop=5.0, data={"input": x}, labels=labels)
    assert result.scan.metric == "accuracy drop (points)" and result.scan.achieved <= 5.0
    accuracy = (ort_run(result.model, {"input": x})["logits"].argmax(1) == labels).mean() * 100
    assert 100 - accuracy == pytest.approx(result.scan.achieved) and result.achieved > 0


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"method": "random"}, OptionError, "unknown pruning method 'random'"),
    ({"method": "2:4", "sparsity": 0.3}, OptionError, "2:4 sparsity is always 0.5"),
    ({"method": "magnitude"}, OptionError, "--sparsity is needed"),
    ({"method": "channel", "sparsity": 1.0}, OptionError, "must be in [0, 1)"),
    ({"method": "channel", "max_error": 0.1, "max_accuracy_drop": 1.0}, OptionError, "give one budget"),
    ({"method": "channel", "max_accuracy_drop": 1.0}, OptionError, "needs labelled data"),
    ({"method": "channel", "sparsity": 0.3, "layers": ["nothing*"]}, InputError, "nothing to prune with channel"),
])
def test_bad_options(kwargs, error, fragment):
    method = kwargs.pop("method")
    with pytest.raises(error) as info:
        lepton_opt.prune(resnet_cnn(), method, kwargs.pop("sparsity", None), **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_cli_prune(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(resnet_cnn(), path)
    before = path.read_bytes()
    result = lepton("prune", path, "-m", "channel", "-s", "0.3", "--channel-multiple", "1", "-o", tmp_path / "out.onnx",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "conv_0+conv_2" in result.stdout and "channels removed: 31.2%" in result.stdout
    assert "left alone: gemm_0" in result.stdout and "fewer multiply-adds" in result.stdout
    onnx.checker.check_model(str(tmp_path / "out.onnx"))
    assert path.read_bytes() == before
    bad = lepton("prune", path, "-m", "2:4", "-s", "0.7", cwd=tmp_path)
    assert_user_error(bad, "2:4 sparsity is always 0.5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx", "out.onnx"]


def _ffn_with_constant_nodes() -> onnx.ModelProto:
    """A torch-style FFN: MatMul, bias Add, erf GELU whose scalars are Constant nodes, MatMul."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.2, n)
             for n, s in (("w1", (32, 64)), ("b1", (64,)), ("w2", (64, 32)))]

    def scalar(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.float32)))

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["b1", "h"], ["hb"], name="fc1_bias"),
        scalar("sqrt2", 1.4142135), scalar("one", 1.0), scalar("half", 0.5),
        helper.make_node("Div", ["hb", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["hb", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_scalars_from_constant_nodes_do_not_stop_channel_pruning():
    model = _ffn_with_constant_nodes()
    result = lepton_opt.prune(model, "channel", 0.25, channel_multiple=1)
    assert [(r.name, r.shape_before, r.shape_after) for r in result.layers] == [("fc1", [64], [48])]
    feeds = random_inputs(model)
    np.testing.assert_allclose(ort_run(result.model, feeds)["y"], ort_run(_masked_original(model, result), feeds)["y"],
                               rtol=1e-4, atol=1e-5)
