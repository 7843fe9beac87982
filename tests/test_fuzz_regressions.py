"""Models the fuzzer (benchmarks/fuzz.py) found lepton-opt mishandling, kept as regression tests.

Each test builds the mutated model in code, as the fuzzer made it, and checks what the command
line (a subprocess, as users run it) or the API now does: one `error:` line and exit 2 for a
malformed model, success where the model is valid, never an internal error or a traceback.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton_opt
from lepton_opt.errors import LeptonError, ModelLoadError
from tests.models import tiny_mlp
from tests.test_cli import assert_user_error, lepton


def _save(model: onnx.ModelProto, tmp_path, name: str = "m.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _quiet_success(result) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    noise = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith(("warning:", "note:"))]
    assert not noise, result.stderr


# ---------------------------------------------------------------- empty-graph: no nodes
def test_graph_output_computed_by_no_node_is_a_load_error(tmp_path):
    """Fuzz: empty-graph (every node removed; the output `y` is left). Was: optimize/compile
    failed with `internal error: RuntimeError: In clone_graph ...` (exit 1)."""
    model = tiny_mlp()
    del model.graph.node[:]
    with pytest.raises(ModelLoadError, match="graph output 'y' is computed by no node"):
        lepton_opt.optimize(model)
    path = _save(model, tmp_path)
    for command in (["optimize", path, "-o", tmp_path / "o.onnx"], ["compile", path, "-o", tmp_path / "o.lepton"],
                    ["inspect", path]):
        assert_user_error(lepton(*command), "graph output 'y' is computed by no node")


# ---------------------------------------------------------------- library log records on stderr
def test_missing_initializer_is_one_error_line(tmp_path):
    """Fuzz: initializer-missing (a MatMul weight removed). Was: onnx-ir's warning "Input
    'fc_w_0' of node ... cannot be found in any scope ..." on stderr before the `error:` line."""
    model = tiny_mlp()
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "fc_w_0"))
    path = _save(model, tmp_path)
    for command in ("inspect", "optimize", "compile"):
        assert_user_error(lepton(command, path), "reads 'fc_w_0', which no node, input or initializer defines")


@pytest.mark.parametrize("mutation", ["contrib-domain", "no-opset-import"])
def test_failed_shape_inference_prints_no_traceback(tmp_path, mutation):
    """Fuzz: domain (an Add moved to com.microsoft, the default opset spelled 'ai.onnx') and
    opset (no opset_import). Was: onnx-ir logged the InferenceError of the shape inference it
    recovers from, with its whole traceback, on stderr."""
    model = tiny_mlp()
    if mutation == "contrib-domain":
        next(n for n in model.graph.node if n.op_type == "Add").domain = "com.microsoft"
        model.opset_import[0].domain = "ai.onnx"
    else:
        del model.opset_import[:]
    path = _save(model, tmp_path)
    for command in (["inspect", path], ["optimize", path, "-o", tmp_path / "o.onnx"],
                    ["compile", path, "-o", tmp_path / "o.lepton"]):
        result = lepton(*command)
        assert "Traceback" not in result.stderr and result.returncode in (0, 2), result.stderr
        if result.returncode == 2:
            assert_user_error(result)
        else:
            _quiet_success(result)


# ---------------------------------------------------------------- external data out of the folder
def _external(model: onnx.ModelProto, name: str, location: str) -> onnx.ModelProto:
    tensor = next(t for t in model.graph.initializer if t.name == name)
    size = len(onnx.numpy_helper.to_array(tensor).tobytes())
    dims, dtype = list(tensor.dims), tensor.data_type
    tensor.Clear()
    tensor.name, tensor.data_type, tensor.data_location = name, dtype, TensorProto.EXTERNAL
    tensor.dims.extend(dims)
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model


@pytest.mark.parametrize("location, link", [("../../etc/passwd", None), ("/etc/passwd", None),
                                            ("sub/../../../x.bin", None), ("link.bin", "/etc/passwd"),
                                            ("link.bin", "../outside.bin")])
def test_external_data_outside_the_model_folder_is_refused_as_such(tmp_path, location, link):
    """Fuzz: external-data. These were refused by onnx's loader with "external data file missing
    or unreadable"; they are now refused by lepton-opt itself, before anything is read, saying
    why (also with an onnx that does not check)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    if link:
        (folder / "link.bin").symlink_to(link)
    path = _save(_external(tiny_mlp(), "fc_w_0", location), folder)
    assert_user_error(lepton("inspect", path), f"external data location {location!r} lies outside the model's folder")


def test_external_data_beside_the_model_and_in_a_subfolder_loads(tmp_path):
    model = tiny_mlp()
    weights = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "fc_w_0")).tobytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(weights)
    path = _save(_external(tiny_mlp(), "fc_w_0", "sub/w.bin"), tmp_path)
    x = {"x": np.ones((1, 16), np.float32)}
    np.testing.assert_array_equal(lepton_opt.compile(path).run(x)["y"], lepton_opt.compile(tiny_mlp()).run(x)["y"])


# ---------------------------------------------------------------- a type the folder dropped
def _gradient_of_add() -> onnx.ModelProto:
    """ONNX's backend model `simple/test_gradient_of_add`: Add and a training Gradient node."""
    nodes = [helper.make_node("Add", ["a", "b"], ["c"]),
             helper.make_node("Gradient", ["a", "b"], ["dc_da", "dc_db"], name="my_gradient",
                              domain="ai.onnx.preview.training", xs=["a", "b"], y="c")]
    scalar = [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in ("a", "b", "c", "dc_da", "dc_db")]
    graph = helper.make_graph(nodes, "GradientOfAdd", scalar[:2], scalar[2:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12),
                                                   helper.make_opsetid("ai.onnx.preview.training", 1)])


def test_fold_constants_keeps_the_declared_type_of_an_op_without_inference(tmp_path):
    """Fuzz: seen on the unmutated `simple/test_gradient_of_add`. onnxscript's folder set the
    Gradient outputs' type to None (its schema infers none); the output was written without a
    type and onnx.checker refused it: `internal error: ValidationError: Field 'type' of
    'value_info' is required but missing`."""
    result = lepton_opt.optimize(_gradient_of_add(), passes=["fold-constants"])
    assert [o.type.tensor_type.elem_type for o in result.model.graph.output] == [TensorProto.FLOAT] * 3
    onnx.checker.check_model(result.model)
    path = _save(_gradient_of_add(), tmp_path)
    _quiet_success(lepton("optimize", path, "-o", tmp_path / "o.onnx"))
    onnx.checker.check_model(str(tmp_path / "o.onnx"))


# ---------------------------------------------------------------- initializer data of another type
@pytest.mark.parametrize("damage", ["int64_data", "short raw_data"])
def test_initializer_whose_data_does_not_fit_its_type_is_a_load_error(tmp_path, damage):
    """Fuzz: dtype (an int64 initializer's data_type set to INT32, its int64_data kept). Was:
    `internal error: AssertionError: Unsupported dtype INT32 for int64_data` from compile, which
    reads every initializer when it lowers the graph. The raw_data cut short fails there too."""
    dtype = TensorProto.INT32 if damage == "int64_data" else TensorProto.FLOAT
    k = helper.make_tensor("k", TensorProto.INT64, [2], [1, 2])
    if damage == "int64_data":
        k.data_type = TensorProto.INT32
    else:
        k = onnx.numpy_helper.from_array(np.ones(2, np.float32), "k")
        k.raw_data = k.raw_data[:5]
    graph = helper.make_graph([helper.make_node("Add", ["x", "k"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", dtype, [2])],
                              [helper.make_tensor_value_info("y", dtype, [2])], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match="initializer 'k' holds data that does not fit its type"):
        lepton_opt.compile(model)
    assert_user_error(lepton("compile", _save(model, tmp_path), "-o", tmp_path / "m.lepton"),
                      "initializer 'k' holds data that does not fit its type")


# ---------------------------------------------------------------- ill-typed nodes, TVM's stderr
def test_node_reading_a_type_its_schema_does_not_allow_is_a_load_error(tmp_path):
    """Fuzz: dtype (LpPool's input set to uint8; an Attention's V to uint8). Was: exit 2, but
    after TVM's "Warning: BlockBuilder destroyed with remaining blocks!" on stderr (the build
    failed on `power only applies to float`); now refused before lowering, naming the node."""
    graph = helper.make_graph([helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 7])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ModelLoadError, match=r"node 'LpPool' \(LpPool\) reads 'x' of type UINT8 as its input 'X', "
                                             r"which takes .*tensor\(float\)"):
        lepton_opt.compile(model)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 2]),
                               helper.make_tensor_value_info("b", TensorProto.INT32, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    mixed = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert_user_error(lepton("compile", _save(mixed, tmp_path), "-o", tmp_path / "m.lepton"),
                      "reads 'a' of tensor(float) and 'b' of tensor(int32), which must have one type (T)")


def test_a_build_that_fails_in_tvm_prints_only_the_error_line(tmp_path):
    """Fuzz: dims (the K input of ONNX's test_attention_4d_attn_mask_bool_4d_expanded one rank
    short). The build fails inside a TVM pass; TVM's C++ code printed "Warning: BlockBuilder
    destroyed with remaining blocks!" to stderr before lepton-opt's `error:` line."""
    import onnx.backend.test.case.node as node_cases
    from onnx.backend.test.case.node import attention  # noqa: F401 - registers its cases

    case = next(c for c in node_cases._NodeTestCases if c.name == "test_attention_4d_attn_mask_bool_4d_expanded")
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    next(i for i in model.graph.input if i.name == "K").type.tensor_type.shape.dim.pop()
    result = lepton("compile", _save(model, tmp_path), "-o", tmp_path / "m.lepton")
    assert "BlockBuilder" not in result.stderr
    assert_user_error(result)


def test_tvm_output_during_a_build_is_held_and_dropped_only_when_it_fails(capfd):
    import os

    from lepton_opt.targets.compile import _native_stderr_held

    with pytest.raises(RuntimeError), _native_stderr_held():
        os.write(2, b"native noise of a failed build\n")
        raise RuntimeError("the build failed")
    with _native_stderr_held():
        os.write(2, b"native note of a build that worked\n")
        print("python's stderr goes on", file=__import__("sys").stderr)
    err = capfd.readouterr().err
    assert "native noise" not in err
    assert "python's stderr goes on\nnative note of a build that worked\n" in err


# ---------------------------------------------------------------- bfloat16 inputs
def _bfloat16_input_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
                               helper.make_node("Relu", ["f"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_run_and_verify_of_a_bfloat16_input(tmp_path):
    """Fuzz: dtype (an input's elem_type set to 16, bfloat16). Was: seeded inputs for a bfloat16
    input failed (`AttributeError: type object 'numpy.float32' has no attribute 'kind'`), so
    `lepton-opt run` without --input and `compile --verify` were internal errors."""
    path = _save(_bfloat16_input_model(), tmp_path)
    result = lepton("compile", path, "-o", tmp_path / "m.lepton", "--verify")
    _quiet_success(result)
    assert "y: max abs error" in result.stdout and "OK" in result.stdout
    _quiet_success(lepton("run", tmp_path / "m.lepton"))


def test_verify_against_a_model_onnxruntime_refuses_is_one_error_line(tmp_path):
    """Fuzz: dtype (a graph output declared bfloat16 where the model computes float). lepton-opt
    compiles it; onnxruntime refuses it. Was: `compile --verify` ended in an internal error."""
    model = _bfloat16_input_model()
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.BFLOAT16
    compiled = lepton_opt.compile(model)
    with pytest.raises(LeptonError, match="onnxruntime cannot run the model to verify against"):
        lepton_opt.verify(compiled, model)
    x = np.ones((3, 4), np.float32)
    import ml_dtypes

    np.testing.assert_array_equal(compiled.run({"x": x.astype(ml_dtypes.bfloat16)})["y"], x)
    assert_user_error(lepton("compile", _save(model, tmp_path), "-o", tmp_path / "m.lepton", "--verify"),
                      "onnxruntime cannot run the model to verify against")
