"""``lepton-opt debug`` / ``lepton_opt.debug``: the first value that goes wrong, per candidate.

Each case plants a known fault (a float16 overflow, a weight that wrecks int8 quantization, a
wrong pass) and checks that debug names the node responsible, not merely that it fails; the
numbers are checked against onnxruntime run here independently.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import lepton_opt
from lepton_opt import cli
from lepton_opt.passes import registry
from lepton_opt.passes.base import Pass, PassResult
from tests.models import ort_run, tiny_mlp
from tests.test_cli import lepton


def overflow_mlp() -> onnx.ModelProto:
    """3 x (MatMul + Add), Relu between: fc2/MatMul reaches ~1.6e5, beyond float16's 65504; every
    weight fits float16, so the conversion keeps no node in float32."""
    weights = [numpy_helper.from_array(np.full(shape, value, np.float32), name) for name, shape, value in [
        ("w1", (8, 16), 4.0), ("b1", (16,), 50.0), ("w2", (16, 16), 200.0), ("b2", (16,), 1.0),
        ("w3", (16, 4), 1e-4), ("b3", (4,), 0.5)]]
    node = helper.make_node
    graph = helper.make_graph(
        [node("MatMul", ["x", "w1"], ["m1"], name="fc1/MatMul"), node("Add", ["m1", "b1"], ["a1"], name="fc1/Add"),
         node("Relu", ["a1"], ["h1"], name="fc1/Relu"),
         node("MatMul", ["h1", "w2"], ["m2"], name="fc2/MatMul"), node("Add", ["m2", "b2"], ["a2"], name="fc2/Add"),
         node("Relu", ["a2"], ["h2"], name="fc2/Relu"),
         node("MatMul", ["h2", "w3"], ["m3"], name="fc3/MatMul"), node("Add", ["m3", "b3"], ["y"], name="fc3/Add")],
        "overflow_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def overflow_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(overflow_mlp(), path)
    return path


def test_fp16_names_the_matmul_that_overflows(overflow_path):
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 8)).astype(np.float32)}
    exposed = onnx.load(overflow_path)
    exposed.graph.output.append(helper.make_tensor_value_info("m2", TensorProto.FLOAT, None))
    reference = ort_run(exposed, feeds)
    assert np.abs(reference["m2"]).max() > 65504 and np.isfinite(reference["y"]).all()  # the premise

    report = lepton_opt.debug(overflow_path, precision="fp16", feeds=feeds)
    rows = {r.node: r for r in report.rows}
    assert [r.node for r in report.rows] == [n.name for n in exposed.graph.node]  # every value, in graph order
    assert report.first_divergent.node == "fc2/MatMul" and report.first_divergent.op_type == "MatMul"
    assert rows["fc2/MatMul"].nonfinite == 16 and rows["fc2/MatMul"].max_abs == float("inf")
    assert rows["fc1/Relu"].ok and 0 < rows["fc1/Relu"].max_abs < 0.1  # rounded to float16, no more
    assert not report.ok and "'fc2/MatMul' (MatMul)" in report.verdict and "non-finite" in report.verdict
    # bfloat16 has float32's range: the same model does not diverge there
    assert lepton_opt.debug(overflow_path, precision="bf16", feeds=feeds).ok


def test_cli_fp16_exits_1_naming_the_matmul(overflow_path):
    result = lepton("debug", overflow_path, "--precision", "fp16")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "first divergence at node 'fc2/MatMul' (MatMul)" in result.stdout
    assert "first diverging values" in result.stdout and "fc1/MatMul" not in result.stdout.split("first diverging")[1]


def test_json_is_strict_and_says_what_null_stands_for(overflow_path):
    result = lepton("debug", overflow_path, "--precision", "fp16", "--json")
    assert result.returncode == 1, result.stderr

    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    doc = json.loads(result.stdout, parse_constant=refuse)
    assert doc["schema_version"] == 1 and doc["command"] == "debug" and doc["ok"] is False
    first = doc["first_divergent"]
    assert first["node"] == "fc2/MatMul" and first["max_abs"] is None
    assert first["nonfinite_fields"]["max_abs"] == "inf" and first["nonfinite"] == 16
    assert any("null stands for a non-finite number" in n for n in doc["notes"])
    assert doc["compared"] == len(doc["rows"]) == 8


def dead_channel_cnn(dead: bool = True) -> onnx.ModelProto:
    """conv1 -> conv2 -> conv3 (3x3, Relu after each) -> GAP -> Gemm. With ``dead``, conv1's
    channel 0 is always 0 and conv2 reads it with a weight of 100 in every output channel: no
    effect in float, but per-channel int8 scales then round every other conv2 weight to 0."""
    rng = np.random.default_rng(0)

    def weight(out_ch, in_ch):
        return (rng.standard_normal((out_ch, in_ch, 3, 3)) * np.sqrt(2 / (in_ch * 9))).astype(np.float32)

    w1, w2, w3 = weight(8, 3), weight(8, 8), weight(8, 8)
    if dead:
        w1[0] = 0.0
        w2[:, 0, 1, 1] = 100.0
    zeros = np.zeros(8, np.float32)
    initializers = [numpy_helper.from_array(a, n) for a, n in [
        (w1, "w1"), (w2, "w2"), (w3, "w3"), (zeros, "b1"), (zeros, "b2"), (zeros, "b3"),
        ((rng.standard_normal((8, 10)) * 0.3).astype(np.float32), "wf"), (np.zeros(10, np.float32), "bf")]]
    node = helper.make_node
    nodes = []
    for i, src in enumerate(["x", "r1", "r2"], start=1):
        nodes += [node("Conv", [src, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
    nodes += [node("GlobalAveragePool", ["r3"], ["g"], name="gap"), node("Flatten", ["g"], ["f"], name="flatten"),
              node("Gemm", ["f", "wf", "bf"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_int8_names_the_node_that_adds_the_most_error(tmp_path):
    feeds = {"x": np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    model = dead_channel_cnn()
    report = lepton_opt.debug(model, precision="int8", feeds=feeds, samples=8)
    rows = {r.node: r for r in report.rows}
    assert report.most_added.node == "conv2" and rows["conv2"].added > 0.5
    assert max(r.added for r in report.rows if r.node != "conv2") < 0.5  # downstream inherits, it does not add
    assert rows["conv2"].candidate_value.endswith("DequantizeLinear_Output")  # the value that replaced c2
    assert "most error added by node 'conv2' (Conv)" in report.verdict
    # the output's error, against onnxruntime running the same quantization independently
    qdq = lepton_opt.quantize(model, samples=8).model
    expected = np.abs(ort_run(qdq, feeds)["y"] - ort_run(model, feeds)["y"]).max()
    assert rows["fc"].max_abs == pytest.approx(expected, rel=1e-6)
    # the control: without the dead channel conv2 is not the worst node
    assert lepton_opt.debug(dead_channel_cnn(dead=False), precision="int8", feeds=feeds,
                            samples=8).most_added.node != "conv2"

    path = tmp_path / "cnn.onnx"
    onnx.save(model, path)
    result = CliRunner().invoke(cli.main, ["debug", str(path), "--precision", "int8", "--samples", "8"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "error added per node" in result.output and "conv2" in result.output
    assert "most error added by node 'conv2' (Conv)" in result.output


class NegateSecondBias(Pass):
    """Test-only, deliberately wrong: negates the constant of the second Add."""

    name = "negate-second-bias"

    def call(self, model):
        node = [n for n in model.graph if n.op_type == "Add"][1]
        bias = node.inputs[1]
        if bias.name.endswith("__negated"):
            return PassResult(model, False, 0)
        negated = ir.Value(name=f"{bias.name}__negated", shape=bias.shape, type=bias.type,
                           const_value=ir.tensor(-bias.const_value.numpy(), name=f"{bias.name}__negated"))
        model.graph.register_initializer(negated)
        node.replace_input_with(1, negated)
        return PassResult(model, True, 1)


def test_a_broken_pass_is_named_at_its_first_wrong_node(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.PASSES, NegateSecondBias.name, NegateSecondBias)
    path = tmp_path / "mlp.onnx"
    onnx.save(tiny_mlp(), path)
    report = lepton_opt.debug(path, passes="remove-no-ops,negate-second-bias")
    assert [(r.node, r.ok) for r in report.rows][:4] == [("matmul_0", True), ("add_0", True), ("relu_0", True),
                                                        ("matmul_1", True)]
    assert report.first_divergent.node == "add_1" and report.first_divergent.op_type == "Add"
    assert lepton_opt.debug(path, passes="remove-no-ops,cse").ok  # correct passes: nothing diverges

    result = CliRunner().invoke(cli.main, ["debug", str(path), "--passes", "negate-second-bias"])
    assert result.exit_code == 1, result.output
    assert "first divergence at node 'add_1' (Add)" in result.output


def test_compiled_builds_match_and_a_fp16_build_shows_its_overflow(tmp_path, overflow_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(tiny_mlp(), path)
    artifact = tmp_path / "mlp.lepton"
    lepton_opt.compile(path).save(artifact)
    result = lepton("debug", path, "--artifact", artifact)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: no divergence: all 6 compared values within atol=0.0001" in result.stdout
    assert "the artifact itself: y: max abs error" in result.stdout

    # A real float16 build with the values as outputs: its own MatMul overflows, named as such.
    report = lepton_opt.debug(overflow_path, compile=True, precision="fp16")
    assert report.mode == "compiled" and report.first_divergent.node == "fc2/MatMul"
    assert report.first_divergent.nonfinite == 16 and {r.node for r in report.rows if r.ok} >= {"fc1/MatMul"}
    capped = lepton_opt.debug(path, compile=True, max_values=3)
    assert capped.ok and len(capped.rows) == 3 and "y" in {r.value for r in capped.rows}
    assert any("3 of 6 values marked" in n for n in capped.notes)


@pytest.mark.parametrize("args, fragment", [
    ([], "debug what?"),
    (["--precision", "fp16", "--passes", "cse"], "give one of --precision, --passes"),
    (["--passes", "no-such-pass"], "unknown pass 'no-such-pass'"),
])
def test_bad_input_exits_2(overflow_path, args, fragment):
    result = CliRunner().invoke(cli.main, ["debug", str(overflow_path), *args])
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output
