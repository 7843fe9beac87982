"""Every error a user can cause is a LeptonError with one line that says what and what to do."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import lepton_opt
from lepton_opt.errors import (ArtifactError, InputError, LeptonError, ModelLoadError, ShapeError,
                               TargetError, UnsupportedModelError)
from tests.models import tiny_mlp


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert isinstance(excinfo.value, LeptonError)
    assert excinfo.value.exit_code == 2
    return message


def _raises(exc, fn, *args, match=None, **kwargs) -> str:
    with pytest.raises(exc, match=match) as excinfo:
        fn(*args, **kwargs)
    return _one_line(excinfo)


# ------------------------------------------------------------------------------- loading
def test_missing_file(tmp_path):
    _raises(ModelLoadError, lepton_opt.compile, tmp_path / "nope.onnx", match=r"nope\.onnx: no such file")


def test_directory_instead_of_file(tmp_path):
    _raises(ModelLoadError, lepton_opt.compile, tmp_path, match="not a file")


def test_empty_file(tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    _raises(ModelLoadError, lepton_opt.compile, tmp_path / "e.onnx", match="empty file")


def test_not_onnx(tmp_path):
    (tmp_path / "x.onnx").write_text("this is not a protobuf\n" * 10)
    _raises(ModelLoadError, lepton_opt.compile, tmp_path / "x.onnx", match="not an ONNX model|holds no ONNX graph")


def test_truncated_protobuf(tmp_path):
    data = tiny_mlp().SerializeToString()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 2])
    _raises(ModelLoadError, lepton_opt.compile, tmp_path / "t.onnx", match="truncated|not an ONNX model")


def test_opset_newer_than_supported():
    model = tiny_mlp()
    model.opset_import[0].version = 99
    _raises(ModelLoadError, lepton_opt.compile, model, match="opset 99 is newer than the newest supported")


def test_wrong_source_type():
    _raises(ModelLoadError, lepton_opt.compile, 42, match="pass a path, bytes or onnx.ModelProto")


# ------------------------------------------------------------------------------- lowering
def _custom_ops_model():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("FancyNorm", ["a"], ["b"], name="fancy_1", domain="com.example"),
        helper.make_node("FancyNorm", ["b"], ["c"], name="fancy_2", domain="com.example"),
        helper.make_node("Mystery", ["c"], ["y"], name="mystery", domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.example", 1)])


def test_unsupported_ops_are_all_listed_at_once():
    message = _raises(UnsupportedModelError, lepton_opt.compile, _custom_ops_model())
    for name in ("com.example.FancyNorm", "fancy_1", "fancy_2", "com.example.Mystery", "mystery"):
        assert name in message, message


def test_inspect_lists_unsupported_ops():
    summary = lepton_opt.inspect_model(_custom_ops_model())
    assert summary.unsupported == {"com.example.FancyNorm": ["fancy_1", "fancy_2"],
                                   "com.example.Mystery": ["mystery"]}
    assert summary.op_histogram["Relu"] == 1


def _slice_from_batch_model():
    """A Slice that starts at the dynamic batch size (x[:, batch:]): needs the batch fixed to compile.
    (Tile by the batch was this example until Tile took symbolic repeats.)"""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Slice", ["x", "n1", "big", "one"], ["y"], name="slice"),
    ]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [], [0]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
             helper.make_tensor("big", TensorProto.INT64, [1], [1 << 30]),
             helper.make_tensor("one", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_symbolic_dim_that_lowering_needs_names_input_and_flag():
    message = _raises(ShapeError, lepton_opt.compile, _slice_from_batch_model())
    assert "'x'" in message and "--input-shape x:" in message and "batch" in message, message


def test_fixing_the_dim_makes_it_compile():
    compiled = lepton_opt.compile(_slice_from_batch_model(), input_shapes={"x": [3, 4]})
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(compiled.run({"x": x})["y"], x[:, 3:])


@pytest.mark.parametrize("shapes,match", [
    ({"nope": [1, 16]}, "unknown input 'nope'; the model's inputs are 'x'"),
    ({"x": [1, 16, 1]}, "has rank 2"),
    ({"x": [2, 16]}, "dimension 0 is fixed at 1"),
])
def test_bad_input_shapes(shapes, match):
    _raises(ShapeError, lepton_opt.compile, tiny_mlp(), input_shapes=shapes, match=match)


# ------------------------------------------------------------------------------- targets
def test_unknown_target():
    _raises(TargetError, lepton_opt.compile, tiny_mlp(), target="tpu", match="unknown target 'tpu'")


def test_bad_cuda_arch():
    _raises(TargetError, lepton_opt.compile, tiny_mlp(), target="cuda", cuda_arch="ampere",
            match="not a CUDA architecture")


def test_bad_mcpu():
    _raises(TargetError, lepton_opt.compile, tiny_mlp(), mcpu="pentium-9000", match="not a CPU LLVM knows")


def test_nvcc_missing(monkeypatch):
    import lepton_opt.targets.build as build

    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    _raises(TargetError, lepton_opt.compile, tiny_mlp(), target="cuda", match="needs nvcc")


# ------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def mlp():
    return lepton_opt.compile(tiny_mlp())


@pytest.mark.parametrize("feeds,match", [
    ({"z": np.zeros((1, 16), np.float32)}, "unknown input 'z'; the model's inputs are 'x'"),
    ({}, "missing input 'x'"),
    ({"x": np.zeros((1, 16), np.float64)}, r"input 'x' has dtype float64, expected float32"),
    ({"x": np.zeros((1, 15), np.float32)}, r"input 'x' has shape \[1, 15\], expected \[1, 16\]"),
    ({"x": np.zeros((16,), np.float32)}, r"expected \[1, 16\] \(rank 2\)"),
])
def test_wrong_inputs_at_run_time(mlp, feeds, match):
    _raises(InputError, mlp.run, feeds, match=match)


def test_inconsistent_symbolic_dims_at_run_time():
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    compiled = lepton_opt.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    _raises(InputError, compiled.run, {"a": np.zeros((2, 2), np.float32), "b": np.zeros((3, 2), np.float32)},
            match="another input gave N=2")


def test_load_compiled_errors(tmp_path, mlp):
    _raises(ArtifactError, lepton_opt.load_compiled, tmp_path / "none.lepton", match="no such artifact directory")
    (tmp_path / "empty").mkdir()
    _raises(ArtifactError, lepton_opt.load_compiled, tmp_path / "empty", match="not a lepton-opt artifact")
    saved = mlp.save(tmp_path / "m.lepton")
    (saved / "model.so").unlink()
    _raises(ArtifactError, lepton_opt.load_compiled, saved, match="library model.so is missing")
    (saved / "manifest.json").write_text("{")
    _raises(ArtifactError, lepton_opt.load_compiled, saved, match="corrupt")


def test_save_refuses_to_overwrite_a_non_artifact(tmp_path, mlp):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep me")
    _raises(ArtifactError, mlp.save, tmp_path / "precious", match="not a lepton-opt artifact")
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep me"


def test_model_that_onnx_rejects_is_a_load_error():
    model = tiny_mlp()
    model.graph.node[0].input[0] = "undefined_value"
    with pytest.raises(LeptonError) as excinfo:
        lepton_opt.compile(model)
    _one_line(excinfo)
