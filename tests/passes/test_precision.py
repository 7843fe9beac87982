"""Mixed precision (fp16 / bf16): structure, numerics against fp32 onnxruntime, block lists,
weights beyond the type's range, the accuracy guard, and the lowering's fp32 accumulation."""

from __future__ import annotations

import collections

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_opt
from lepton_opt.errors import LeptonError, OptionError
from lepton_opt.passes.precision import DEFAULT_OP_BLOCK_LIST, convert_precision
from tests.models import ort_run, random_inputs, resnet_cnn, transformer_layer
from tests.passes.common import parse
from tests.test_cli import lepton


def _proto(result) -> onnx.ModelProto:
    proto = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _input_types(proto: onnx.ModelProto, op_type: str) -> list[list[int]]:
    """Element types of each ``op_type`` node's inputs (value_info from shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return [[types.get(i) for i in n.input if i] for n in inferred.graph.node if n.op_type == op_type]


def _cast_chains(proto: onnx.ModelProto) -> list[str]:
    producers = {o: n for n in proto.graph.node for o in n.output}
    return [n.name for n in proto.graph.node
            if n.op_type == "Cast" and n.input[0] in producers and producers[n.input[0]].op_type == "Cast"]


def _optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    return lepton_opt.optimize(model).model


def test_fp16_cnn_runs_in_onnxruntime_close_to_fp32():
    model = _optimized(resnet_cnn(batch=1))
    result = convert_precision(model, "fp16")
    proto = _proto(result)
    # Every conv and the classifier compute from float16 tensors; only the model's IO is cast.
    assert all(t == [TensorProto.FLOAT16] * len(t) for t in _input_types(proto, "Conv"))
    assert all(t == [TensorProto.FLOAT16] * len(t) for t in _input_types(proto, "Gemm"))
    assert collections.Counter(n.op_type for n in proto.graph.node)["Cast"] == 2
    assert result.casts == 2 and not result.plan.kept and not _cast_chains(proto)
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [TensorProto.FLOAT]
    assert all(t.data_type == TensorProto.FLOAT16 for t in proto.graph.initializer)
    cosines = []
    for seed in range(3):
        feeds = random_inputs(model, seed=seed)
        ref, got = ort_run(model, feeds)["logits"], ort_run(proto, feeds)["logits"]
        assert np.abs(ref - got).max() <= 1e-2 * np.abs(ref).max()
        cosines.append(_cosine(ref, got))
    assert min(cosines) >= 0.9999


def test_fp16_transformer_layer_keeps_the_fp32_mask_and_matches():
    # newer transformers mask with float32's lowest value: it does not fit float16
    model = _optimized(transformer_layer(layernorm="decomposed", mask_value=float(np.finfo(np.float32).min)))
    result = convert_precision(model, "fp16")
    proto = _proto(result)
    kept = list(result.plan.kept.values())
    assert len(kept) == 1 and "beyond float16's range" in kept[0].reason and kept[0].op_type == "Mul"
    assert any("kept in float32" in w for w in result.warnings)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops["LayerNormalization"] == 2 and ops["Gelu"] == 1 and ops["Attention"] == 1
    assert all(t[0] == TensorProto.FLOAT16 for t in _input_types(proto, "MatMul"))
    assert not _cast_chains(proto)
    feeds = random_inputs(model, seed=1)
    ref, got = ort_run(model, feeds)["y"], ort_run(proto, feeds)["y"]
    assert _cosine(ref, got) >= 0.9999 and np.isfinite(got).all()


def test_model_inputs_and_outputs_take_the_low_type_without_keep_io_types():
    model = _optimized(resnet_cnn(batch=1))
    proto = _proto(convert_precision(model, "fp16", keep_io_types=False))
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [TensorProto.FLOAT16]
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [TensorProto.FLOAT16]
    assert not any(n.op_type == "Cast" for n in proto.graph.node)
    feeds = random_inputs(model, seed=0)
    got = ort_run(proto, {"input": feeds["input"].astype(np.float16)})["logits"]
    assert got.dtype == np.float16
    assert _cosine(ort_run(model, feeds)["logits"], got) >= 0.999


def test_block_lists_keep_ops_and_nodes_in_fp32_with_their_reasons():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 8] x) => (float[2, 8] y) {
            a = Relu (x)
            e = Exp (a)
            s = Sigmoid (e)
            t = Tanh (s)
            y = Relu (t)
        }""")
    default = convert_precision(model, "fp16")
    assert {k.op_type for k in default.plan.kept.values()} == {"Exp"}
    assert "Exp is in the block list" in next(iter(default.plan.kept.values())).reason
    names = [n.name for n in default.model.graph if n.op_type == "Tanh"]
    custom = convert_precision(model, "fp16", op_block_list=["Sigmoid"], node_block_list=names)
    assert {k.op_type: k.reason for k in custom.plan.kept.values()} == {
        "Exp": f"Exp is in the block list: {DEFAULT_OP_BLOCK_LIST['Exp']}",
        "Sigmoid": "Sigmoid is in the block list: in --op-block-list", "Tanh": "in --node-block-list"}
    proto = _proto(custom)
    for op_type, want in (("Exp", TensorProto.FLOAT), ("Sigmoid", TensorProto.FLOAT), ("Tanh", TensorProto.FLOAT),
                          ("Relu", TensorProto.FLOAT16)):
        assert all(t == [want] for t in _input_types(proto, op_type)), op_type
    # Exp -> Sigmoid -> Tanh stay float32 between them: casts only at the two boundaries + IO
    assert result_casts(proto) == 4 and not _cast_chains(proto)
    unblocked = convert_precision(model, "fp16", use_default_block_list=False)
    assert not unblocked.plan.kept
    feeds = random_inputs(model)
    np.testing.assert_allclose(ort_run(proto, feeds)["y"], ort_run(model, feeds)["y"], atol=2e-3)
    with pytest.raises(OptionError, match="names no node of the graph: nope"):
        convert_precision(model, "fp16", node_block_list=["nope"])


def result_casts(proto: onnx.ModelProto) -> int:
    return sum(n.op_type == "Cast" for n in proto.graph.node)


def test_casts_in_the_model_are_shortcut_not_chained():
    # An int64 mask cast to float feeds a converted Mul, and a float value is cast to int64: the
    # converted model casts the mask straight to float16 and reads the float16 value in the Cast.
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 4] x, int64[2, 4] m) => (float[2, 4] y, int64[2, 4] k) {
            mf = Cast <to = 1> (m)
            p = Mul (x, mf)
            y = Relu (p)
            k = Cast <to = 7> (y)
        }""")
    proto = _proto(convert_precision(model, "fp16"))
    assert not _cast_chains(proto)
    casts = {n.input[0]: helper.get_attribute_value(n.attribute[0]) for n in proto.graph.node if n.op_type == "Cast"}
    assert casts["m"] == TensorProto.FLOAT16 and "mf" not in casts
    feeds = {"x": np.linspace(-3, 3, 8, dtype=np.float32).reshape(2, 4), "m": np.array([[1, 0, 1, 1], [0, 1, 1, 0]])}
    ref, got = ort_run(model, feeds), ort_run(proto, feeds)
    np.testing.assert_allclose(got["y"], ref["y"], atol=2e-3)
    np.testing.assert_array_equal(got["k"], ref["k"])


def test_weights_beyond_fp16_range_stay_fp32_unclamped_with_a_warning():
    big = np.array([[1e6, -2.0], [0.5, 3.0]], np.float32)
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 2] x) => (float[3, 2] y) {
            h = MatMul (x, big)
            r = Relu (h)
            y = MatMul (r, small)
        }""", [numpy_helper.from_array(big, "big"),
               numpy_helper.from_array(np.full((2, 2), 1e-3, np.float32), "small")])
    result = convert_precision(model, "fp16")
    kept = list(result.plan.kept.values())
    assert [k.op_type for k in kept] == ["MatMul"]
    assert "weight 'big' holds 1e+06, beyond float16's range" in kept[0].reason
    assert result.warnings == [f"{kept[0].reason}: kept in float32 with the nodes that read it"]
    assert result.weights_kept == ["big"]
    proto = _proto(result)
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(weights["big"], big)  # not clamped
    # bfloat16 holds 1e6: nothing is kept there
    assert not convert_precision(model, "bf16").plan.kept


def test_small_constants_that_would_round_to_zero_stay_fp32():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) {
            s = Add (x, eps)
            y = Div (x, s)
        }""", [numpy_helper.from_array(np.array([1e-9], np.float32), "eps")])
    result = convert_precision(model, "fp16")
    assert [k.op_type for k in result.plan.kept.values()] == ["Add"]
    assert "rounds to 0 in float16" in next(iter(result.plan.kept.values())).reason


def _overflowing_model() -> onnx.ModelProto:
    """x @ W lands around 1e5 (beyond float16's 65504) before it is scaled back down."""
    rng = np.random.default_rng(0)
    w = (np.abs(rng.standard_normal((16, 16))) * 2000 + 2000).astype(np.float32)
    return parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4, 16] x) => (float[4, 16] y) {
            a = Abs (x)
            h = MatMul (a, w)
            s = Mul (h, scale)
            y = Add (s, a)
        }""", [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1e-5, np.float32), "scale")])


def test_the_guard_rescues_a_model_that_naive_fp16_breaks():
    model = _overflowing_model()
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32) + 2}
    ref = ort_run(model, feeds)["y"]
    # onnxruntime's CPU provider runs float16 regions without float16 kernels in float32 (its
    # InsertCastTransformer), which hides the overflow; lepton-opt's build stores float16.
    naive = _proto(convert_precision(model, "fp16"))
    broken = lepton_opt.compile(naive, level="O0").run(feeds)["y"]
    assert not np.isfinite(broken).all()  # inf out of the matmul

    data = {"x": np.random.default_rng(2).standard_normal((32, 16)).astype(np.float32) + 2}  # 8 batches of 4
    guarded = convert_precision(model, "fp16", max_error=1e-2, data=data)
    report = guarded.guard
    kept = {k.op_type: k.reason for k in report.kept}
    assert set(kept) == {"MatMul", "Mul"}  # the MatMul's output and the Mul's input exceed 65504
    assert "beyond float16's range (65504)" in kept["MatMul"] and "its output 'h'" in kept["MatMul"]
    assert report.naive > 1e-2 >= report.final and report.metric == "max_error"
    assert "32 samples" in report.data and not guarded.warnings
    for fixed in (ort_run(_proto(guarded), feeds)["y"],
                  lepton_opt.compile(_proto(guarded), level="O0").run(feeds)["y"]):
        assert np.abs(fixed - ref).max() <= 1e-2 * np.abs(ref).max()


def test_the_guard_bisects_to_the_nodes_that_lose_precision():
    # x + 3000 - 3000 keeps x to the nearest 2 in float16: the two nodes around the big
    # offset lose it; the guard keeps only what the budget needs, on seeded inputs.
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4, 8] x) => (float[4, 8] y) {
            r = Relu (x)
            a = Add (r, big)
            b = Sub (a, big)
            c = Sigmoid (b)
            y = Mul (c, r)
        }""", [numpy_helper.from_array(np.array(3000.0, np.float32), "big")])
    result = convert_precision(model, "fp16", min_cosine=0.9999, samples=4)
    report = result.guard
    assert report.naive < 0.9999 <= report.final and report.metric == "cosine"
    assert {k.op_type for k in report.kept} <= {"Add", "Sub"} and report.kept
    assert all("relative error at its output" in k.reason for k in report.kept)
    assert any("seeded random inputs" in w for w in result.warnings)
    assert "Relu" not in {k.op_type for k in result.plan.kept.values()}


def test_bf16_raises_the_opset_and_compiles_close_to_fp32():
    model = _optimized(resnet_cnn(batch=1))
    result = convert_precision(model, "bf16")
    proto = _proto(result)
    assert proto.opset_import[0].version == 22 and any("opset raised from 17 to 22" in w for w in result.warnings)
    assert all(t == [TensorProto.BFLOAT16] * len(t) for t in _input_types(proto, "Conv"))
    compiled = lepton_opt.compile(model, precision="bf16")
    assert compiled.manifest["precision"]["precision"] == "bf16" and compiled.precision.plan.converted
    feeds = random_inputs(model, seed=0)
    assert _cosine(compiled.run(feeds)["logits"], ort_run(model, feeds)["logits"]) >= 0.999


def test_compiled_fp16_accumulates_in_fp32():
    # 4096 products of 1: float16 accumulation stalls at 2048 (2048 + 1 rounds to 2048);
    # a float32 accumulator gives 4096 exactly, which float16 holds.
    model = parse("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[2, 4096] x) => (float[2, 16] y, float[2, 1] m) {
            y = MatMul (x, w)
            m = ReduceMean <keepdims = 1> (x, axes)
        }""", [numpy_helper.from_array(np.ones((4096, 16), np.float32), "w"),
               numpy_helper.from_array(np.array([1], np.int64), "axes")])
    compiled = lepton_opt.compile(model, precision="fp16")
    x = np.ones((2, 4096), np.float32)
    x[1, ::2] = 1 + 2 ** -10  # mean 1 + 2^-11: lost by a float16 running sum, kept by float32
    out = compiled.run({"x": x})
    np.testing.assert_array_equal(out["y"][0], np.full(16, 4096, np.float32))
    expected_mean = np.float32(x[1].astype(np.float64).mean()).astype(np.float16)
    assert out["m"][1, 0] == np.float32(expected_mean)


def test_fp16_transformer_compiles_close_to_onnxruntime():
    model = transformer_layer(layernorm="decomposed")
    compiled = lepton_opt.compile(model, precision="fp16")
    feeds = random_inputs(model, seed=3)
    ref = ort_run(model, feeds)["y"]
    got = compiled.run(feeds)["y"]
    assert _cosine(ref, got) >= 0.9999 and np.abs(ref - got).max() < 2e-2 * np.abs(ref).max()


def test_subgraphs_and_their_captured_values_stay_fp32():
    then_branch = helper.make_graph([helper.make_node("Relu", ["h"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["h"]), helper.make_node("Tanh", ["x"], ["u"]),
         helper.make_node("If", ["c"], ["z"], then_branch=then_branch, else_branch=else_branch),
         helper.make_node("Add", ["z", "u"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = convert_precision(model, "fp16")
    reasons = {k.op_type: k.reason for k in result.plan.kept.values()}
    assert reasons == {"Sigmoid": "its output is read inside a subgraph"}  # If itself reads only a bool
    proto = _proto(result)
    feeds = {"x": np.array([0.5, -1.0], np.float32), "c": np.array(True)}
    np.testing.assert_allclose(ort_run(proto, feeds)["y"], ort_run(model, feeds)["y"], atol=2e-3)


def test_bad_options_are_one_line_errors():
    model = resnet_cnn(batch=1)
    with pytest.raises(OptionError, match="unknown precision 'fp8'"):
        convert_precision(model, "fp8")
    with pytest.raises(OptionError, match="give one budget"):
        convert_precision(model, "fp16", max_error=0.1, min_cosine=0.9)
    with pytest.raises(OptionError, match="--data is the accuracy guard's calibration data"):
        convert_precision(model, "fp16", data={"input": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(LeptonError, match="apply to a precision conversion"):
        lepton_opt.optimize(model, max_error=0.1)


def test_cli_optimize_precision_writes_an_fp16_model_and_reports(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_overflowing_model(), path)
    before = path.read_bytes()
    out = tmp_path / "m.fp16.onnx"
    result = lepton("optimize", path, "-o", out, "--precision", "fp16", "--max-error", "0.01", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "kept in fp32" in result.stdout and "beyond float16's range" in result.stdout
    assert "accuracy guard (max error <= 0.01, on 8 seeded random inputs" in result.stdout
    assert "warning: no --data" in result.stderr
    saved = onnx.load(out)
    onnx.checker.check_model(saved, full_check=True)
    assert _input_types(saved, "Abs") == [[TensorProto.FLOAT16]] and _input_types(saved, "MatMul")[0][1] == 1
    assert path.read_bytes() == before

    for args, message in ((["--max-error", "0.1"], "--max-error apply only with --precision"),
                          (["--precision", "fp16", "--node-block-list", "nope"], "names no node of the graph")):
        bad = lepton("optimize", path, "-o", tmp_path / "bad.onnx", *args, cwd=tmp_path)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "bad.onnx").exists()


def test_bf16_weights_round_to_nearest_even():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 22]>
        g (float[1, 2] x) => (float[1, 2] y) {
            y = MatMul (x, w)
        }""", [numpy_helper.from_array(np.array([[1.00390625, 3.14159], [-2.5, 1e-3]], np.float32), "w")])
    proto = _proto(convert_precision(model, "bf16"))
    (w,) = [t for t in proto.graph.initializer]
    assert w.data_type == TensorProto.BFLOAT16
    expected = np.array([[1.00390625, 3.14159], [-2.5, 1e-3]], np.float32).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(numpy_helper.to_array(w).astype(np.float32), expected.astype(np.float32))
