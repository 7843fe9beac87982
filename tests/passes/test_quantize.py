"""Int8 quantization (lepton_opt.quantize / `lepton-opt quantize`): the QDQ it writes, the
calibration methods, dynamic and weight-only modes, exclusions and the accuracy guard, each
checked against onnxruntime running the float and the quantized model."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import lepton_opt
from lepton_opt.cli import main
from lepton_opt.errors import LeptonError
from tests.models import ort_run, random_inputs, resnet_cnn, tiny_mlp, transformer_layer


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _producer(model: onnx.ModelProto, name: str):
    return next((n for n in model.graph.node if name in n.output), None)


def _weight_dq(model: onnx.ModelProto, node_name: str):
    node = next(n for n in model.graph.node if n.name == node_name)
    return _producer(model, node.input[1])


def _calibration(model: onnx.ModelProto, count: int = 16, seed: int = 100) -> dict[str, np.ndarray]:
    feeds = [random_inputs(model, seed=seed + i) for i in range(count)]
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def test_static_qdq_of_a_cnn(tmp_path):
    model = resnet_cnn()
    result = lepton_opt.quantize(model, data=_calibration(model))
    q = result.model
    onnx.checker.check_model(q)
    assert result.quantized == {"Conv": 6, "Gemm": 1} and not result.excluded and not result.warnings
    assert all(n.domain in ("", "ai.onnx") for n in q.graph.node)
    assert not any(n.op_type == "BatchNormalization" for n in q.graph.node)  # folded (-O2) before quantizing
    inits = _inits(q)
    for node in (n for n in q.graph.node if n.op_type == "Conv"):
        dq = _weight_dq(q, node.name)
        assert dq.op_type == "DequantizeLinear"
        weight, scale, zero = (inits[i] for i in dq.input)
        assert weight.dtype == np.int8 and zero.dtype == np.int8 and not zero.any()
        assert scale.shape == (weight.shape[0],)  # per output channel
        data_dq = _producer(q, node.input[0])
        assert data_dq.op_type == "DequantizeLinear" and inits[data_dq.input[2]].dtype == np.uint8
    for seed in (1, 2):  # held out from the calibration inputs
        feeds = random_inputs(model, seed=seed)
        assert _cosine(ort_run(q, feeds)["logits"], ort_run(model, feeds)["logits"]) > 0.99


def test_attention_matmuls_stay_float_and_weights_are_quantized():
    model = transformer_layer()
    fused = lepton_opt.quantize(model, samples=4)  # -O2 fuses attention into one op, left float
    assert "Attention" in {n.op_type for n in fused.model.graph.node} and not fused.excluded
    assert any("no --data" in w for w in fused.warnings)
    plain = lepton_opt.quantize(model, samples=4, level="O0")  # the exported MatMul form
    assert len(plain.excluded) == 2 and all("attention" in e.reason for e in plain.excluded)
    for result in (fused, plain):
        assert sum(result.quantized.values()) == 6, result.quantized  # the six weight matmuls
        feeds = random_inputs(model, seed=3)
        assert _cosine(ort_run(result.model, feeds)["y"], ort_run(model, feeds)["y"]) > 0.99


def _outlier_model() -> onnx.ModelProto:
    """x @ I: the QuantizeLinear of x shows the calibrated range."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "outliers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(np.eye(64, dtype=np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _input_scale(q: onnx.ModelProto) -> float:
    node = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    return float(_inits(q)[node.input[1]])


def test_calibration_methods_on_a_distribution_with_outliers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 64)).astype(np.float32)
    x[7, 3] = 50.0  # one outlier in 12800 values
    scales = {m: _input_scale(lepton_opt.quantize(_outlier_model(), data={"x": x}, method=m, percentile=99.9).model)
              for m in ("minmax", "percentile", "entropy")}
    # minmax covers the outlier: a range of ~(50 + 4) over 255 steps.
    assert 50 / 255 <= scales["minmax"] <= 56 / 255
    # percentile (99.9% of |x|) and entropy (KL divergence) clip it to a few sigma of N(0, 1).
    assert 4 / 255 < scales["percentile"] < 10 / 255
    assert 6 / 255 < scales["entropy"] < 20 / 255


def test_dynamic_quantization(tmp_path):
    model = transformer_layer()
    result = lepton_opt.quantize(model, "dynamic")
    ops = {n.op_type for n in result.model.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and result.method is None
    assert result.quantized == {"MatMul": 6}
    feeds = random_inputs(model, seed=0)
    assert _cosine(ort_run(result.model, feeds)["y"], ort_run(model, feeds)["y"]) > 0.999
    compiled = lepton_opt.compile(result.model)
    np.testing.assert_allclose(compiled.run(feeds)["y"], ort_run(result.model, feeds)["y"], rtol=1e-4, atol=1e-4)


def test_dynamic_quantization_takes_the_gemms_the_passes_fuse():
    """-O2 fuses a 2-D MatMul + bias Add into Gemm, which onnxruntime's dynamic quantizer does not
    take: they are quantized as MatMul + Add (they stayed float while the result said quantized)."""
    model = tiny_mlp()
    result = lepton_opt.quantize(model, "dynamic")
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("MatMulInteger") == 2 and "Gemm" not in ops, ops
    assert result.quantized == {"MatMul": 2}
    feeds = random_inputs(model, seed=0)
    float_y, quant_y = ort_run(model, feeds)["y"], ort_run(result.model, feeds)["y"]
    assert 0 < np.abs(quant_y - float_y).max() and _cosine(quant_y, float_y) > 0.999
    compiled = lepton_opt.compile(model, precision="int8", mode="dynamic")
    np.testing.assert_allclose(compiled.run(feeds)["y"], quant_y, rtol=1e-4, atol=1e-4)


def test_weight_only_quantization():
    model = transformer_layer()
    result = lepton_opt.quantize(model, "weight-only")
    q = result.model
    inits = _inits(q)
    dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 6 and not any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    for dq in dqs:
        assert inits[dq.input[0]].dtype == np.int8 and inits[dq.input[1]].ndim == 1
    assert not any(t.dtype == np.float32 and t.ndim == 2 and t.size >= 64 * 64 for t in inits.values())
    feeds = random_inputs(model, seed=0)
    ref, got = ort_run(model, feeds)["y"], ort_run(q, feeds)["y"]
    assert _cosine(got, ref) > 0.9999
    compiled = lepton_opt.compile(q)
    np.testing.assert_allclose(compiled.run(feeds)["y"], got, rtol=1e-4, atol=1e-4)


def test_exclusions():
    model = resnet_cnn()
    names = [n.name for n in lepton_opt.optimize(model).model.graph.node if n.op_type == "Conv"]
    result = lepton_opt.quantize(model, samples=2, exclude_nodes=[names[1]], exclude_op_types=["Gemm"],
                                 keep_first_last=True)
    kept = {e.name: e.reason for e in result.excluded}
    assert "--exclude-nodes" in kept[names[1]] and any("--exclude-op-types" in r for r in kept.values())
    assert sum("--keep-first-last" in r for r in kept.values()) == 2
    assert result.quantized == {"Conv": 3}
    for name in kept:
        dq = _weight_dq(result.model, name)
        assert dq is None or dq.op_type != "DequantizeLinear"
    with pytest.raises(LeptonError, match="no node named 'nope'"):
        lepton_opt.quantize(model, exclude_nodes=["nope"])
    with pytest.raises(LeptonError, match="has no LSTM node"):
        lepton_opt.quantize(model, exclude_op_types=["LSTM"])
    with pytest.raises(LeptonError, match="needs labelled data"):
        lepton_opt.quantize(model, max_accuracy_drop=1.0)
    with pytest.raises(LeptonError, match="unknown calibration method"):
        lepton_opt.quantize(model, method="mse")


def _sensitive_model() -> onnx.ModelProto:
    """Two layers; ``first`` reads an input whose channel 0 is 1000x larger than the others (and
    weighs it down by 1000), so a per-tensor 8-bit step of that input wipes out the channels
    that carry the signal. onnxruntime's QDQ quantizes a tensor wherever a quantized node
    reads or writes it; keeping ``first`` float leaves the input unquantized."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 32)).astype(np.float32) / 6
    w1[0, :] /= 1000.0
    w2 = rng.standard_normal((32, 16)).astype(np.float32) / 6
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
         helper.make_node("MatMul", ["h", "w2"], ["y"], name="second")], "sensitive",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _sensitive_inputs(count: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((count, 32)).astype(np.float32)
    x[:, 0] *= 1000.0
    return x


def test_the_guard_keeps_the_sensitive_layer_float():
    model = _sensitive_model()
    data = {"x": _sensitive_inputs(32, 1)}
    feeds = {"x": _sensitive_inputs(1, 2)}
    plain = lepton_opt.quantize(model, data=data)
    assert not _cosine(ort_run(plain.model, feeds)["y"], ort_run(model, feeds)["y"]) > 0.99  # (nan: all 0)
    guarded = lepton_opt.quantize(model, data=data, min_cosine=0.999)
    guard = guarded.guard
    assert guard.quantized < 0.999 <= guard.final
    assert [k.name for k in guard.kept] == ["first"] and "rank 1 of 2" in guard.kept[0].reason
    assert guarded.quantized == {"MatMul": 1} and "first" in {e.name for e in guarded.excluded}
    assert _cosine(ort_run(guarded.model, feeds)["y"], ort_run(model, feeds)["y"]) > 0.999


def test_cli_quantize_and_compile_int8(tmp_path):
    src = tmp_path / "cnn.onnx"
    onnx.save(resnet_cnn(), src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    runner = CliRunner()
    result = runner.invoke(main, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calibration-samples", "4",
                                  "--min-cosine", "0.99"])
    assert result.exit_code == 0, result.output
    assert "quantized Conv 6, Gemm 1" in result.output and "accuracy guard (cosine >= 0.99" in result.output
    onnx.checker.check_model(str(tmp_path / "q.onnx"))
    result = runner.invoke(main, ["compile", str(tmp_path / "q.onnx"), "-o", str(tmp_path / "q.lepton"), "--verify"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["compile", str(src), "-o", str(tmp_path / "c.lepton"), "--precision", "int8",
                                  "--samples", "4", "--verify"])
    assert result.exit_code == 0, result.output
    assert "int8 (static, minmax calibration" in result.output and "OK" in result.output
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # the input is never modified
    for args in (["--exclude-nodes", "nope"], ["--max-accuracy-drop", "1"], ["--min-cosine", "2"]):
        bad = runner.invoke(main, ["quantize", str(src), "-o", str(tmp_path / "bad.onnx"), *args])
        assert bad.exit_code == 2, (args, bad.output)
        assert len(bad.output.strip().splitlines()) == 1 and "Traceback" not in bad.output
        assert not (tmp_path / "bad.onnx").exists()
    bad = runner.invoke(main, ["quantize", str(src), "--method", "mse"])  # click's own usage error
    assert bad.exit_code == 2 and "'mse' is not one of" in bad.output
    bad = runner.invoke(main, ["compile", str(src), "--precision", "int8", "--max-error", "0.1"])
    assert bad.exit_code == 2 and "apply to fp16/bf16" in bad.output


def _digits_cnn():
    """A CNN on scikit-learn's bundled digits (real data, no download): two fixed random 3x3
    convolutions with ReLU, then a ridge-regression readout fitted in closed form."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    digits = sklearn_datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [1797, 1, 8, 8]
    y = digits.target
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:1200], order[1200:]
    w1 = rng.standard_normal((16, 1, 3, 3)).astype(np.float32) / 3
    w2 = rng.standard_normal((32, 16, 3, 3)).astype(np.float32) / 12
    features = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
         helper.make_node("Relu", ["c2"], ["r2"]),
         helper.make_node("Flatten", ["r2"], ["f"])], "features",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 2048])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    f = ort_run(helper.make_model(features, opset_imports=[helper.make_opsetid("", 17)]), {"x": x[train]})["f"]
    targets = np.eye(10, dtype=np.float32)[y[train]]
    readout = np.linalg.solve(f.T @ f + 10.0 * np.eye(f.shape[1]), f.T @ targets).astype(np.float32)
    features.node.append(helper.make_node("MatMul", ["f", "readout"], ["scores"], name="readout"))
    features.initializer.append(numpy_helper.from_array(readout, "readout"))
    del features.output[:]
    features.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10]))
    model = helper.make_model(features, opset_imports=[helper.make_opsetid("", 17)])
    return model, x[train], x[test], y[test]


def test_digits_int8_accuracy_within_one_point_of_fp32():
    model, calib, x_test, y_test = _digits_cnn()
    q = lepton_opt.quantize(model, data={"x": calib[:200]})
    assert q.quantized == {"Conv": 2, "MatMul": 1}

    def accuracy(scores):
        return 100.0 * float(np.mean(np.argmax(scores, 1) == y_test))

    fp32 = accuracy(ort_run(model, {"x": x_test})["scores"])
    assert fp32 > 90.0
    compiled = lepton_opt.compile(q.model, input_shapes={"x": [len(x_test), 1, 8, 8]})
    int8 = accuracy(compiled.run({"x": x_test})["scores"])
    assert abs(fp32 - int8) <= 1.0, (fp32, int8)
    assert abs(accuracy(ort_run(q.model, {"x": x_test})["scores"]) - int8) <= 0.5
