"""Pass infrastructure: the fixed-point PassManager and its records, the registry and the named
pipelines, verify-each catching a broken pass, and whole pipelines on the test models."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

import lepton_opt
from lepton_opt.errors import LeptonError, OptionError, VerificationError
from lepton_opt.passes import registry
from lepton_opt.passes.base import Pass, PassManager, PassResult, Verifier
from tests.models import resnet_cnn, tiny_mlp, transformer_layer
from tests.passes.common import assert_same_outputs, ops, parse

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


class RemoveOneIdentity(Pass):
    """Test-only: bypasses a single Identity per run, so n Identities need n + 1 rounds."""

    name = "remove-one-identity"

    def call(self, model):
        for node in model.graph:
            if node.op_type == "Identity":
                node.outputs[0].replace_all_uses_with(node.inputs[0])
                model.graph.remove(node, safe=True)
                return PassResult(model, True, 1)
        return PassResult(model, False, 0)


class AlwaysModified(Pass):
    """Test-only: claims a change every time (a buggy pass), so only the cap stops it."""

    name = "always-modified"

    def call(self, model):
        return PassResult(model, True, 0)


class FlipFirstAdd(Pass):
    """Test-only, deliberately wrong: turns the first Add into a Sub."""

    name = "flip-first-add"

    def call(self, model):
        for node in model.graph:
            if node.op_type == "Add":
                node.op_type = "Sub"
                return PassResult(model, True, 1)
        return PassResult(model, False, 0)


def identity_chain(n: int) -> onnx.ModelProto:
    body = "\n".join(f"t{i + 1} = Identity(t{i})" for i in range(n))
    return parse(f"""{HEADER}
    g (float[2] t0) => (float[2] y) {{
        {body}
        y = Relu(t{n})
    }}""")


def test_pass_manager_runs_to_a_fixed_point_and_records_every_run():
    model = ir.serde.deserialize_model(identity_chain(3))
    result = PassManager([RemoveOneIdentity()], max_iterations=10)(model)
    assert result.modified and result.converged
    assert result.iterations == 4  # three rounds that each remove one, one quiet round
    assert [r.rewrites for r in result.records] == [1, 1, 1, 0]
    first = result.records[0]
    assert first.ops_before == {"Identity": 3, "Relu": 1} and first.ops_after == {"Identity": 2, "Relu": 1}
    assert (first.nodes_before, first.nodes_after, first.op_delta) == (4, 3, {"Identity": -1})
    (row,) = result.summary()
    assert (row.name, row.runs, row.rewrites, row.nodes_before, row.nodes_after, row.node_delta) == (
        "remove-one-identity", 4, 3, 4, 1, -3)
    assert row.op_delta == {"Identity": -3}
    assert all(r.seconds >= 0 for r in result.records)


def test_pass_manager_stops_at_the_cap():
    model = ir.serde.deserialize_model(identity_chain(1))
    result = PassManager([RemoveOneIdentity(), AlwaysModified()], max_iterations=3)(model)
    assert result.iterations == 3 and not result.converged
    assert [r.name for r in result.records][:2] == ["remove-one-identity", "always-modified"]


def test_pass_manager_with_no_passes_changes_nothing():
    model = ir.serde.deserialize_model(identity_chain(1))
    result = PassManager([])(model)
    assert not result.modified and result.converged and result.records == []


def test_registry_and_pipelines():
    for name, make in registry.PASSES.items():
        made = make()
        assert made.name == name and made.description
    for level, names in registry.PIPELINES.items():
        assert all(n in registry.PASSES for n in names), level
    assert registry.PIPELINES["O0"] == ()
    assert set(registry.PIPELINES["O1"]) <= set(registry.PIPELINES["O2"]) <= set(registry.PIPELINES["O3"])
    assert "fold-constants" in registry.PIPELINES["O1"]
    assert registry.pipeline_names("o1") == registry.pipeline_names("-O1") == registry.pipeline_names("1")
    assert registry.pipeline_names("O3", passes="cse, remove-no-ops") == ["cse", "remove-no-ops"]
    with pytest.raises(OptionError, match="unknown pass 'nope'; known passes: expand-contrib-ops, fold-shapes"):
        registry.pipeline_names(passes=["cse", "nope"])
    with pytest.raises(OptionError, match="unknown optimization level 'O9'"):
        registry.pipeline_names("O9")


def test_optimize_api_returns_a_model_and_table_and_leaves_the_input_alone():
    model = transformer_layer()
    before = model.SerializeToString()
    result = lepton_opt.optimize(model)  # O2
    assert model.SerializeToString() == before
    assert isinstance(result.model, onnx.ModelProto)
    assert result.passes == list(registry.PIPELINES["O2"])
    assert [row.name for row in result.table] == result.passes
    assert result.nodes_after < result.nodes_before
    assert result.ops_before["Shape"] == 8 and "Shape" not in result.ops_after
    assert result.converged
    # an ir.Model in gives an ir.Model out, and the given one is untouched
    given = ir.serde.deserialize_model(model)
    out = lepton_opt.optimize(given, "O1")
    assert isinstance(out.model, ir.Model) and out.model is not given
    assert len(list(given.graph)) == result.nodes_before
    assert lepton_opt.optimize(model, "O0").nodes_after == result.nodes_before


@pytest.mark.parametrize("level", ["O1", "O3"])
@pytest.mark.parametrize("name, build, shapes", [
    ("resnet_cnn", resnet_cnn, None),
    ("transformer_layer", transformer_layer, None),
    ("transformer_layer dynamic batch", lambda: transformer_layer(batch="B"), {"x": [2, 16, 64],
                                                                               "attention_mask": [2, 16]}),
])
def test_pipelines_on_test_models_match_onnxruntime(name, build, shapes, level):
    model = build()
    result = lepton_opt.optimize(model, level, input_shapes=shapes, verify_each=True)
    onnx.checker.check_model(result.model, full_check=True)
    reference = model if shapes is None else lepton_opt.optimize(model, "O0", input_shapes=shapes).model
    assert_same_outputs(reference, result.model, atol=1e-5)
    if name.startswith("transformer"):
        # shape computations folded: no Shape/Gather/Concat/Unsqueeze left, one Reshape per reshape
        assert not {"Shape", "Gather", "Concat", "Constant"} & set(ops(result.model))
        assert result.nodes_after <= result.nodes_before - 28


def test_verify_each_names_the_broken_pass(monkeypatch):
    monkeypatch.setitem(registry.PASSES, FlipFirstAdd.name, FlipFirstAdd)
    with pytest.raises(VerificationError) as caught:
        lepton_opt.optimize(tiny_mlp(), passes=["remove-no-ops", "flip-first-add", "cse"], verify_each=True)
    message = str(caught.value)
    assert "pass 'flip-first-add' changed output 'y'" in message and "\n" not in message
    assert caught.value.exit_code == 1
    # without verification the broken pass goes through unnoticed (to a fixed point: both Adds)
    assert lepton_opt.optimize(tiny_mlp(), passes=["flip-first-add"]).ops_after["Sub"] == 2


def test_verifier_reports_a_pass_that_breaks_the_model():
    model = ir.serde.deserialize_model(tiny_mlp())
    verifier = Verifier(model)
    next(n for n in model.graph if n.op_type == "Relu").op_type = "NoSuchOp"
    with pytest.raises(VerificationError, match="pass 'renamer' broke the model: onnxruntime cannot run it"):
        verifier.check(model, "renamer")


def test_verify_each_needs_a_model_onnxruntime_runs():
    graph = onnx.helper.make_graph([onnx.helper.make_node("Unknown", ["x"], ["y"], domain="custom.domain")], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18),
                                                         onnx.helper.make_opsetid("custom.domain", 1)])
    with pytest.raises(LeptonError, match="verify-each needs onnxruntime to run the input model"):
        lepton_opt.optimize(model, verify_each=True)
    assert lepton_opt.optimize(model).ops_after == {"custom.domain.Unknown": 1}


class Explodes(Pass):
    """Test-only: a pass that trips over the model."""

    name = "explodes"

    def call(self, model):
        raise RuntimeError("boom")


class BreaksTheGraph(Pass):
    """Test-only: leaves an invalid model (a node reading a value nothing defines) and says it changed."""

    name = "breaks-the-graph"

    def call(self, model):
        node = next(n for n in model.graph if n.op_type == "Relu")
        node.replace_input_with(0, ir.Value(name="nowhere", type=ir.TensorType(ir.DataType.FLOAT)))
        return PassResult(model, True, 1)


@pytest.mark.parametrize("broken", [Explodes, BreaksTheGraph])
def test_a_broken_pass_is_rolled_back_and_named_while_the_others_run(monkeypatch, broken):
    monkeypatch.setitem(registry.PASSES, broken.name, broken)
    model = tiny_mlp()
    result = lepton_opt.optimize(model, passes=["remove-no-ops", broken.name, "fold-constants", "cse"])
    assert len(result.warnings) == 1 and f"pass {broken.name!r} was rolled back" in result.warnings[0]
    assert ("raised RuntimeError: boom" if broken is Explodes else "invalid model") in result.warnings[0]
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(model, result.model)
    # rolled back once, then skipped: the other passes still ran in every round
    runs = [r.name for r in result.records]
    assert runs.count(broken.name) == 1 and runs.count("cse") == result.iterations >= 1


def test_compile_names_a_rolled_back_pass_and_keeps_the_others(monkeypatch):
    monkeypatch.setitem(registry.PASSES, Explodes.name, Explodes)
    from lepton_opt import api

    monkeypatch.setitem(registry.PIPELINES, api.COMPILE_LEVEL, ("fold-shapes", "explodes", "fold-constants"))
    with pytest.warns(UserWarning, match="pass 'explodes' was rolled back"):
        compiled = lepton_opt.compile(transformer_layer())
    assert compiled.manifest["passes"] == ["fold-shapes", "fold-constants"]
    assert "boom" in compiled.manifest["passes_rolled_back"]["explodes"]
    assert any("explodes" in w for w in compiled.warnings)


class FlipsSilently(FlipFirstAdd):
    """Test-only, deliberately wrong twice: changes an op and reports no change."""

    name = "flips-silently"

    def call(self, model):
        return PassResult(super().call(model).model, False, 0)


def test_verify_each_catches_a_pass_that_hides_its_change(monkeypatch):
    monkeypatch.setitem(registry.PASSES, FlipsSilently.name, FlipsSilently)
    with pytest.raises(VerificationError, match="pass 'flips-silently' changed output 'y'"):
        lepton_opt.optimize(tiny_mlp(), passes=["flips-silently"], verify_each=True)
