"""``lepton-opt optimize``, run as users run it (a subprocess of the installed script), plus one
in-process run for the deliberately broken pass that only a test can register."""

from __future__ import annotations

import re

import onnx
import pytest
from click.testing import CliRunner

from lepton_opt import cli
from lepton_opt.passes import registry
from tests.conftest import listing
from tests.models import transformer_layer
from tests.passes.common import assert_same_outputs, ops
from tests.passes.test_base import FlipFirstAdd
from tests.test_cli import assert_user_error, lepton


@pytest.fixture
def transformer_path(tmp_path):
    path = tmp_path / "bert.onnx"
    onnx.save(transformer_layer(batch="B"), path)
    return path


def test_optimize_writes_a_standard_model_and_prints_the_table(tmp_path, transformer_path):
    before = transformer_path.read_bytes()
    result = lepton("optimize", transformer_path, "--input-shape", "x:2x16x64",
                    "--input-shape", "attention_mask:2x16", "--verify-each", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "bert.opt.onnx"  # the default name
    assert listing(tmp_path) == {"bert.onnx", "bert.opt.onnx"}
    assert transformer_path.read_bytes() == before
    for name in registry.PIPELINES["O2"]:
        assert name in result.stdout
    assert "every pass verified against onnxruntime" in result.stdout
    optimized = onnx.load(out)
    title = re.search(r"bert\.onnx: (\d+) -> (\d+) nodes", result.stdout)
    assert title and (int(title[1]), int(title[2])) == (83, len(optimized.graph.node)), result.stdout
    assert len(optimized.graph.node) <= 83 - 28 and "Shape -8" in result.stdout
    onnx.checker.check_model(optimized, full_check=True)
    assert "Shape" not in ops(optimized)
    assert_same_outputs(transformer_layer(batch=2), optimized, atol=1e-5)


@pytest.mark.parametrize("args, expected", [
    (["-O0"], {"Shape": 8}),
    (["-O1"], {"Shape": 0}),
    (["--passes", "remove-dead-nodes,cse"], {"Shape": 4}),  # Shape(t) twice per reshape: merged
])
def test_optimize_levels_and_explicit_passes(tmp_path, transformer_path, args, expected):
    out = tmp_path / "out" / "model.onnx"
    result = lepton("optimize", transformer_path, "-o", out, *args)
    assert result.returncode == 0, result.stderr
    optimized = onnx.load(out)
    for op, count in expected.items():
        assert ops(optimized)[op] == count
    assert_same_outputs(transformer_layer(batch="B"), optimized, shapes={"B": 3}, atol=1e-5)


@pytest.mark.parametrize("args, fragments", [
    (["--passes", "cse,no-such-pass"], ["unknown pass 'no-such-pass'", "known passes: expand-contrib-ops, fold-shapes"]),
    (["--input-shape", "nope:1x2"], ["--input-shape names unknown input 'nope'"]),
    (["-o", "."], ["is a directory"]),
])
def test_optimize_user_errors_write_nothing(tmp_path, transformer_path, args, fragments):
    before = transformer_path.read_bytes()
    result = lepton("optimize", transformer_path, *args, cwd=tmp_path)
    assert_user_error(result, *fragments)
    assert listing(tmp_path) == {"bert.onnx"}
    assert transformer_path.read_bytes() == before


def test_optimize_refuses_to_overwrite_its_input(tmp_path, transformer_path):
    before = transformer_path.read_bytes()
    assert_user_error(lepton("optimize", transformer_path, "-o", transformer_path), "is the input model")
    assert transformer_path.read_bytes() == before
    assert_user_error(lepton("optimize", tmp_path / "missing.onnx"), "no such file")


def test_verify_each_failure_exits_1_naming_the_pass(tmp_path, transformer_path, monkeypatch):
    monkeypatch.setitem(registry.PASSES, FlipFirstAdd.name, FlipFirstAdd)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["optimize", str(transformer_path), "--passes",
                                           "fold-shapes,flip-first-add", "--verify-each"])
    assert result.exit_code == 1, result.output
    assert "pass 'flip-first-add' changed output 'y'" in result.output
    assert listing(tmp_path) == {"bert.onnx"}


class BreaksTheModel(FlipFirstAdd):
    """Test-only: leaves a node whose op no ONNX opset has."""

    name = "breaks-the-model"

    def call(self, model):
        result = super().call(model)
        for node in model.graph:
            if node.op_type == "Sub":
                node.op_type = "NoSuchOp"
        return result


def test_an_invalid_output_is_never_written(tmp_path, transformer_path, monkeypatch):
    monkeypatch.setitem(registry.PASSES, BreaksTheModel.name, BreaksTheModel)
    monkeypatch.chdir(tmp_path)
    before = transformer_path.read_bytes()
    result = CliRunner().invoke(cli.main, ["optimize", str(transformer_path), "--passes",
                                           "breaks-the-model,remove-no-ops"])
    assert result.exit_code == 0, result.output
    assert "pass 'breaks-the-model' was rolled back" in result.output and "NoSuchOp" in result.output
    assert listing(tmp_path) == {"bert.onnx", "bert.opt.onnx"}
    onnx.checker.check_model(str(tmp_path / "bert.opt.onnx"), full_check=True)
    assert "NoSuchOp" not in {n.op_type for n in onnx.load(str(tmp_path / "bert.opt.onnx")).graph.node}
    assert transformer_path.read_bytes() == before
