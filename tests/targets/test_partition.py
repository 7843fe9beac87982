"""Nodes that cannot be lowered run in onnxruntime; the rest is compiled (targets/partition.py).

Each model is built here in the style of the exports that need it: a TopK whose k is an input,
a detector's NonMaxSuppression post-processing, torchvision's "no boxes left" If around it, an
onnxruntime contrib op. Outputs are checked against onnxruntime on the whole model, before and
after a save/load round trip, and the partition itself is asserted (which nodes went where).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_opt
from lepton_opt.errors import UnsupportedModelError
from lepton_opt.targets.artifact import PartitionedModel
from tests.models import ort_run
from tests.test_cli import assert_user_error, lepton

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers, opset=17, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(a, n) for n, a in initializers.items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    return model


def topk_model() -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> TopK with k an input -> Mul; a Sigmoid output beside."""
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("TopK", ["f", "k"], ["v", "i"]),
         helper.make_node("Mul", ["v", "two"], ["y"]), helper.make_node("Sigmoid", ["r"], ["s"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("i", TensorProto.INT64, None),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4, 8, 8])],
        {"w": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "two": np.array(2, np.float32)})


def _detector_head(prefix: str = "") -> tuple[list[onnx.NodeProto], dict]:
    """Conv features -> boxes [1, 256, 4] and sigmoid scores [1, 1, 256]."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["feat"]),
        helper.make_node("Reshape", ["feat", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["rows"], perm=[0, 2, 1]),
        helper.make_node("Slice", ["rows", "s0", "s4", "s2"], ["boxes"]),
        helper.make_node("Slice", ["rows", "s4", "s5", "s2"], ["logit"]),
        helper.make_node("Transpose", ["logit"], ["logit_t"], perm=[0, 2, 1]),
        helper.make_node("Sigmoid", ["logit_t"], ["scores"]),
    ]
    weights = {"w": RNG.standard_normal((5, 3, 1, 1)).astype(np.float32),
               "shape": np.array([1, 5, 256], np.int64), "s0": np.array([0], np.int64),
               "s4": np.array([4], np.int64), "s5": np.array([5], np.int64), "s2": np.array([2], np.int64)}
    return nodes, weights


def _nms_nodes(out: str) -> tuple[list[onnx.NodeProto], dict]:
    """NonMaxSuppression -> the kept boxes, scaled: [K, 4]."""
    nodes = [
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_thr"], ["sel"]),
        helper.make_node("Gather", ["sel", "col"], ["idx"], axis=1),
        helper.make_node("Squeeze", ["boxes", "ax0"], ["boxes2d"]),
        helper.make_node("Gather", ["boxes2d", "idx"], ["kept"], axis=0),
        helper.make_node("Mul", ["kept", "scale"], [out]),
    ]
    consts = {"max_out": np.array([20], np.int64), "iou": np.array([0.5], np.float32),
              "score_thr": np.array([0.6], np.float32), "col": np.array(2, np.int64),
              "ax0": np.array([0], np.int64), "scale": np.array(16.0, np.float32)}
    return nodes, consts


def detector_model() -> onnx.ModelProto:
    head, weights = _detector_head()
    nms, consts = _nms_nodes("dets")
    return _model(head + nms, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                  [helper.make_tensor_value_info("dets", TensorProto.FLOAT, None),
                   helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 256])],
                  {**weights, **consts})


def guarded_detector_model() -> onnx.ModelProto:
    """torchvision's batched NMS guard: If(no score above the threshold) -> empty, else NMS."""
    head, weights = _detector_head()
    nms, consts = _nms_nodes("dets_else")
    empty = helper.make_graph([helper.make_node("Constant", [], ["dets_then"],
                                                value=numpy_helper.from_array(np.zeros((0, 4), np.float32)))],
                              "then", [], [helper.make_tensor_value_info("dets_then", TensorProto.FLOAT, None)])
    full = helper.make_graph(nms, "else", [], [helper.make_tensor_value_info("dets_else", TensorProto.FLOAT, None)],
                             [numpy_helper.from_array(a, n) for n, a in consts.items()])
    nodes = head + [
        helper.make_node("ReduceMax", ["scores"], ["top"], keepdims=0),
        helper.make_node("Less", ["top", "cut"], ["none_left"]),
        helper.make_node("If", ["none_left"], ["dets"], then_branch=empty, else_branch=full),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                  [helper.make_tensor_value_info("dets", TensorProto.FLOAT, None)],
                  {**weights, "cut": np.array(0.6, np.float32)})


def _check(model: onnx.ModelProto, feeds: dict, tmp_path, **options) -> PartitionedModel:
    compiled = lepton_opt.compile(model, **options)
    assert isinstance(compiled, PartitionedModel)
    expected = ort_run(model, feeds)
    for got in (compiled.run(feeds), lepton_opt.load_compiled(compiled.save(tmp_path / "m.lepton")).run(feeds)):
        assert list(got) == list(expected)
        for name, ref in expected.items():
            assert got[name].shape == ref.shape, name
            np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5, err_msg=name)
    return compiled


def _kinds(compiled) -> list[str]:
    return [s["kind"] for s in compiled.manifest["segments"]]


def test_topk_with_runtime_k_runs_in_onnxruntime(tmp_path):
    feeds = {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32), "k": np.array([5], np.int64)}
    model = topk_model()
    with pytest.warns(UserWarning, match=r"run in onnxruntime.*TopK"):
        compiled = _check(model, feeds, tmp_path)
    assert _kinds(compiled) == ["tvm", "onnxruntime"]
    fallback = compiled.manifest["fallback"]["nodes"]
    assert any("TopK" in why and "computed at run time" in why for why in fallback.values())
    # The Mul behind TopK is too light to be worth a hand-over back to compiled code.
    assert any("light post-processing" in why for why in fallback.values())
    assert sorted(p.name for p in (tmp_path / "m.lepton").iterdir()) == [
        "manifest.json", "segment0.so", "segment1.onnx"]
    # another k: the onnxruntime segment's output shape follows the data
    np.testing.assert_allclose(compiled.run({**feeds, "k": np.array([9], np.int64)})["y"],
                               ort_run(model, {**feeds, "k": np.array([9], np.int64)})["y"], rtol=1e-5)


def test_no_fallback_refuses_with_the_nodes_named():
    with pytest.raises(UnsupportedModelError, match="TopK"):
        lepton_opt.compile(topk_model(), fallback=False)


def test_detector_non_max_suppression(tmp_path):
    feeds = {"x": RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    compiled = _check(detector_model(), feeds, tmp_path)
    assert _kinds(compiled) == ["tvm", "onnxruntime"]
    assert any(name and "NonMaxSuppression" in why for name, why in compiled.manifest["fallback"]["nodes"].items())
    assert len(ort_run(detector_model(), feeds)["dets"]) > 0  # the test holds boxes to compare


def test_non_max_suppression_indices_as_the_graph_output(tmp_path):
    """A detector exported with its NMS last (the selected indices are the model's output): TVM's
    reference NonMaxSuppression lowered but did not build, failing the whole model; it now runs
    in onnxruntime after the compiled head."""
    head, weights = _detector_head()
    consts = {"max_out": np.array([20], np.int64), "iou": np.array([0.5], np.float32),
              "score_thr": np.array([0.6], np.float32)}
    nodes = head + [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_thr"], ["sel"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                   [helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3])], {**weights, **consts})
    feeds = {"x": RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    compiled = _check(model, feeds, tmp_path)
    assert _kinds(compiled) == ["tvm", "onnxruntime"]
    assert len(ort_run(model, feeds)["sel"]) > 0


@pytest.mark.parametrize("bias", [0.0, -50.0])  # boxes survive / none does: both branches taken
def test_if_around_non_max_suppression_is_not_dropped(tmp_path, bias):
    # Before: the If's NMS branch failed to lower and was dropped (the build always took the
    # "no boxes" branch, silently). Now the If runs in onnxruntime, or the build refuses.
    model = guarded_detector_model()
    for init in model.graph.initializer:
        if init.name == "w":
            w = numpy_helper.to_array(init).copy()
            w[4] += bias / 3  # the score channel
            init.CopyFrom(numpy_helper.from_array(w, "w"))
    feeds = {"x": np.abs(RNG.standard_normal((1, 3, 16, 16))).astype(np.float32)}
    compiled = _check(model, feeds, tmp_path)
    assert [why for why in compiled.manifest["fallback"]["nodes"].values() if why.startswith("If node")]
    with pytest.raises(UnsupportedModelError, match="NonMaxSuppression"):  # the op in the branch, named
        lepton_opt.compile(model, fallback=False)


def test_if_branch_with_an_op_without_lowering_is_not_dropped(tmp_path):
    # A branch that fails to lower is dropped only when it holds nothing but lowerable ops (an
    # infeasible branch for these shapes, as silero VAD's 8 kHz one); one holding an op without
    # a lowering is a real branch: the If fails, and runs in onnxruntime.
    fused = helper.make_graph(
        [helper.make_node("FusedGemm", ["x", "w", "b"], ["y_else"], domain="com.microsoft", activation="Relu")],
        "else", [], [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)])
    plain = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y_then"])], "then", [],
                              [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
             helper.make_node("Less", ["top", "cut"], ["small"]),
             helper.make_node("If", ["small"], ["c"], then_branch=plain, else_branch=fused),
             helper.make_node("MatMul", ["c", "m"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "m2"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                   {"w": RNG.standard_normal((12, 16)).astype(np.float32),
                    "b": RNG.standard_normal(16).astype(np.float32), "cut": np.array(1.0, np.float32),
                    "m": RNG.standard_normal((16, 8)).astype(np.float32),
                    "m2": RNG.standard_normal((8, 8)).astype(np.float32)}, domains=["com.microsoft"])
    compiled = _check(model, {"x": RNG.standard_normal((1, 12)).astype(np.float32)}, tmp_path)
    (why,) = compiled.manifest["fallback"]["nodes"].values()
    assert "com.microsoft.FusedGemm" in why
    for scale in (0.01, 10.0):  # both branches
        feeds = {"x": (RNG.standard_normal((1, 12)) * scale).astype(np.float32)}
        np.testing.assert_allclose(compiled.run(feeds)["y"], ort_run(model, feeds)["y"], rtol=1e-4, atol=1e-4)


def _fused_gemm_model(matmuls: int) -> onnx.ModelProto:
    """onnxruntime's contrib FusedGemm (left by its graph optimizer in saved models; one of the
    contrib ops expand-contrib-ops does not rewrite), then ``matmuls`` MatMul+Relu layers."""
    nodes = [helper.make_node("FusedGemm", ["x", "w", "b"], ["h0"], domain="com.microsoft", activation="Relu")]
    weights = {"w": RNG.standard_normal((24, 32)).astype(np.float32),
               "b": RNG.standard_normal(32).astype(np.float32)}
    for i in range(matmuls):
        nodes += [helper.make_node("MatMul", [f"h{i}", f"m{i}"], [f"p{i}"]),
                  helper.make_node("Relu", [f"p{i}"], [f"h{i + 1}"])]
        weights[f"m{i}"] = (RNG.standard_normal((32, 32)) * 0.1).astype(np.float32)
    nodes.append(helper.make_node("Identity", [f"h{matmuls}"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_contrib_op_runs_in_onnxruntime(tmp_path):
    feeds = {"x": RNG.standard_normal((2, 24)).astype(np.float32)}
    compiled = _check(_fused_gemm_model(matmuls=3), feeds, tmp_path)
    assert _kinds(compiled) == ["onnxruntime", "tvm"]
    assert "com.microsoft.FusedGemm" in compiled.manifest["fallback"]["summary"]


def test_mostly_uncompiled_partition_is_refused():
    # Two of the three matrix products would be onnxruntime's: the lowering error stands, with why.
    model = _fused_gemm_model(matmuls=1)
    second = helper.make_node("FusedGemm", ["h1", "w2", "b"], ["h1b"], domain="com.microsoft", activation="Relu")
    model.graph.node.insert(len(model.graph.node) - 1, second)
    model.graph.node[-1].input[0] = "h1b"
    model.graph.initializer.append(numpy_helper.from_array(RNG.standard_normal((32, 32)).astype(np.float32), "w2"))
    with pytest.raises(UnsupportedModelError, match=r"FusedGemm.*67% of the model's convolutions/matmuls uncompiled"):
        lepton_opt.compile(model)
    # A lone op without a lowering: nothing would be compiled, the error is the lowering's own.
    with pytest.raises(UnsupportedModelError, match=r"unsupported op type.*com.microsoft.FusedGemm"):
        lepton_opt.compile(_fused_gemm_model(matmuls=0))


def test_cli_compile_warns_and_run_works(tmp_path):
    path = tmp_path / "topk.onnx"
    onnx.save(topk_model(), path)
    out = tmp_path / "topk.lepton"
    result = lepton("compile", path, "-o", out, "--verify")
    assert result.returncode == 0, result.stderr
    assert "run in onnxruntime" in result.stderr and "TopK" in result.stderr
    assert "segments" in json.loads((out / "manifest.json").read_text())
    np.save(tmp_path / "x.npy", np.ones((1, 3, 8, 8), np.float32))
    np.save(tmp_path / "k.npy", np.array([3], np.int64))
    ran = lepton("run", out, "--input", f"x={tmp_path / 'x.npy'}", "--input", f"k={tmp_path / 'k.npy'}")
    assert ran.returncode == 0, ran.stderr
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_user_error(lepton("compile", path, "-o", tmp_path / "strict.lepton", "--no-fallback"), "TopK")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_onnxruntime_segment_output_dims_are_sampled_only_when_shapes_follow_input_shapes():
    """onnxruntime leaves the output dims of some contrib ops open (DynamicQuantizeLSTM): the
    compiled segment behind would be built dynamic. Where no op's output shape can follow the
    input *values*, two runs on random inputs fix them; a TopK (k from data) keeps them open."""
    from lepton_opt.targets import partition
    from lepton_opt.targets.artifact import onnxruntime_session

    relu = _model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {})
    open_dims = {"y": helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])}
    fixed = partition._sampled_static_types(relu, onnxruntime_session(relu.SerializeToString()), open_dims)
    assert [d.dim_value for d in fixed["y"].type.tensor_type.shape.dim] == [2, 5]
    topk = topk_model()
    session = onnxruntime_session(topk.SerializeToString())
    assert partition._sampled_static_types(topk, session, {"y": open_dims["y"]}) == {}


def _scaler_classifier(batch) -> onnx.ModelProto:
    """What skl2onnx writes for StandardScaler + LogisticRegression (zipmap=False): ai.onnx.ml
    ops only, none of which lowers, whose outputs ONNX's shape inference leaves untyped."""
    coefficients = RNG.standard_normal(12).astype(np.float32).round(3).tolist()
    nodes = [
        helper.make_node("Scaler", ["x"], ["scaled"], domain="ai.onnx.ml", offset=[0.5, -0.2, 1.0, 0.1],
                         scale=[2.0, 0.5, 1.5, 1.0]),
        helper.make_node("LinearClassifier", ["scaled"], ["label", "scores"], domain="ai.onnx.ml",
                         classlabels_ints=[0, 1, 2], coefficients=coefficients, intercepts=[0.1, -0.3, 0.2],
                         multi_class=1, post_transform="NONE"),
        helper.make_node("Normalizer", ["scores"], ["probabilities"], domain="ai.onnx.ml", norm="L1"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                  [helper.make_tensor_value_info("label", TensorProto.INT64, [batch]),
                   helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 3])],
                  {}, opset=15, domains=("ai.onnx.ml",))


def test_model_with_nothing_to_compile_runs_in_onnxruntime(tmp_path):
    """A model none of whose nodes lowers (a scikit-learn pipeline) is not refused: the artifact
    runs it in onnxruntime, and the warnings say that nothing was compiled."""
    feeds = {"x": RNG.uniform(0.0, 3.0, (6, 4)).astype(np.float32)}
    with pytest.warns(UserWarning, match=r"nothing in .* lowers to compiled code: onnxruntime runs all of it"):
        compiled = _check(_scaler_classifier(None), feeds, tmp_path)
    assert _kinds(compiled) == ["onnxruntime"]
    assert sorted(p.name for p in (tmp_path / "m.lepton").iterdir()) == ["manifest.json", "segment0.onnx"]
    assert [o["name"] for o in compiled.outputs] == ["label", "probabilities"]
    assert "library" not in compiled.manifest


def test_onnxruntime_output_of_unknown_shape_is_not_taken_for_a_scalar(tmp_path):
    """onnxruntime reports the shape of an ai.onnx.ml Scaler's output as [], as it does for a
    scalar: taken as rank 0, the MatMul behind it was lowered for a scalar input. It now follows
    the sampled shape ([6, 4]), and the MatMul compiles."""
    from lepton_opt.targets import partition

    model = _scaler_classifier(6)
    del model.graph.node[1:]
    model.graph.node.extend([helper.make_node("MatMul", ["scaled", "w"], ["h"]),
                             helper.make_node("Relu", ["h"], ["y"])])
    model.graph.initializer.append(numpy_helper.from_array(RNG.standard_normal((4, 5)).astype(np.float32), "w"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 5]))
    scaler_only = _scaler_classifier(None)
    del scaler_only.graph.node[1:]
    del scaler_only.graph.output[:]
    scaler_only.graph.output.append(helper.make_empty_tensor_value_info("scaled"))
    session = __import__("onnxruntime").InferenceSession(scaler_only.SerializeToString())
    assert session.get_outputs()[0].shape == []  # what onnxruntime says
    assert "scaled" not in partition.ort_output_types(scaler_only, session)
    feeds = {"x": RNG.uniform(0.0, 3.0, (6, 4)).astype(np.float32)}
    compiled = _check(model, feeds, tmp_path)
    assert _kinds(compiled) == ["onnxruntime", "tvm"]


def _conv_topk_matmul_model() -> onnx.ModelProto:
    """Conv -> Flatten -> TopK with k an input (onnxruntime) -> MatMul -> Relu: a compiled segment
    behind an onnxruntime one, whose dims come from there."""
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Flatten", ["c"], ["f"]),
         helper.make_node("TopK", ["f", "k"], ["v", "i"]), helper.make_node("Unsqueeze", ["v", "last"], ["v2"]),
         helper.make_node("MatMul", ["v2", "m"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        {"w": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "last": np.array([2], np.int64),
         "m": RNG.standard_normal((1, 6)).astype(np.float32)})


def test_segment_behind_onnxruntime_that_does_not_build_with_its_dims_runs_there(tmp_path, monkeypatch):
    """A compiled segment behind an onnxruntime segment takes dims onnxruntime computes at run time,
    which --input-shape cannot fix; where TVM cannot build it with them (DPT's neck behind a run-time
    Resize, MobileViT's transformer behind a run-time Reshape), it runs in onnxruntime too, with why;
    the same failure in a segment of the user's own dims still asks for --input-shape."""
    from lepton_opt.errors import ShapeError
    from lepton_opt.targets import compile as target_compile

    real = target_compile.compile_model

    def failing(model, spec, *, source, **options):
        if source.endswith("(segment 2)") or (fail_first and source.endswith("(segment 0)")):
            error = ShapeError(f"{source}: building with dynamic dimensions (v[1]) failed (emit_te now only "
                               "supports Tensor that has ShapeExpr shape); fix them with --input-shape NAME:DIMS")
            error.first_line = "emit_te now only supports Tensor that has ShapeExpr shape"
            raise error
        return real(model, spec, source=source, **options)

    monkeypatch.setattr(target_compile, "compile_model", failing)
    fail_first = False
    feeds = {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32), "k": np.array([5], np.int64)}
    compiled = _check(_conv_topk_matmul_model(), feeds, tmp_path)
    assert _kinds(compiled) == ["tvm", "onnxruntime"]
    reasons = compiled.manifest["fallback"]["nodes"]
    assert any("behind an onnxruntime segment" in why and "emit_te" in why for why in reasons.values())
    fail_first = True
    with pytest.raises(ShapeError, match="--input-shape"):
        lepton_opt.compile(_conv_topk_matmul_model())
