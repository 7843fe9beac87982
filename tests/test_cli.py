"""The ``lepton-opt`` command line, run as users run it: a subprocess of the installed script.

Bad input must give exactly one line on stderr, exit code 2, no traceback and no output left
behind; the input model is never modified.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import listing
from tests.models import resnet_cnn, tiny_mlp, ort_run


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("lepton-opt")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lepton_opt.cli"]


def lepton(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TVM_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(_cli() + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=600)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------- happy paths
def test_compile_verify_run_inspect(tmp_path, mlp_path):
    before = mlp_path.read_bytes()
    out = tmp_path / "mlp.lepton"
    result = lepton("compile", mlp_path, "-o", out, "--verify", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "y: max abs error" in result.stdout and "cosine" in result.stdout and "OK" in result.stdout
    assert mlp_path.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.so"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 16], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "y", "shape": [1, 8], "dtype": "float32"}]
    assert manifest["target"]["kind"] == "llvm"
    assert manifest["source"]["sha256"]
    assert {"lepton_opt", "tvm", "onnx"} <= set(manifest["versions"])
    assert "fold-constants" in manifest["passes"]
    assert listing(tmp_path) == {"mlp.onnx", "mlp.lepton", "mlp.lepton/model.so", "mlp.lepton/manifest.json"}

    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = lepton("run", out, "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", tmp_path / "outs")
    assert result.returncode == 0, result.stderr
    y = np.load(tmp_path / "outs" / "y.npy")
    np.testing.assert_allclose(y, ort_run(tiny_mlp(), {"x": x})["y"], rtol=0, atol=1e-5)

    result = lepton("inspect", mlp_path)
    assert result.returncode == 0, result.stderr
    assert "MatMul" in result.stdout and "every op has a converter" in result.stdout
    assert "x" in result.stdout and "1x16" in result.stdout


def test_compile_default_output_name_and_dynamic_batch(tmp_path):
    path = tmp_path / "resnet.onnx"
    onnx.save(resnet_cnn(batch="N"), path)
    result = lepton("compile", path, "--input-shape", "input:2x3x32x32", "--verify", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "resnet.lepton" / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [2, 3, 32, 32]


def test_run_fills_missing_inputs_with_seeded_data(tmp_path, mlp_path):
    assert lepton("compile", mlp_path, "-o", tmp_path / "m.lepton").returncode == 0
    result = lepton("run", tmp_path / "m.lepton")
    assert result.returncode == 0, result.stderr
    assert "seeded random data for x" in result.stderr
    assert "[1, 8]" in result.stdout


def test_json_through_a_real_pipe_is_one_document(tmp_path, mlp_path):
    # A real process and pipe: whatever TVM or onnxruntime wrote to the stdout file descriptor
    # itself would land in the document (tests/test_cli_json.py covers --json in-process).
    result = lepton("compile", mlp_path, "-o", tmp_path / "m.lepton", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert doc["schema_version"] == 1 and doc["command"] == "compile" and doc["output"] == str(tmp_path / "m.lepton")


def test_version_and_help():
    assert lepton("--version").returncode == 0
    result = lepton("--help")
    assert result.returncode == 0 and all(c in result.stdout for c in ("compile", "run", "inspect"))


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["missing", "directory", "garbage", "truncated", "opset"])
def test_bad_model_files(tmp_path, case):
    model = tmp_path / "m.onnx"
    if case == "directory":
        model.mkdir()
    elif case == "garbage":
        model.write_bytes(b"\x00\xffnot onnx at all" * 50)
    elif case == "truncated":
        data = tiny_mlp().SerializeToString()
        model.write_bytes(data[: len(data) - 40])
    elif case == "opset":
        proto = tiny_mlp()
        proto.opset_import[0].version = 99
        onnx.save(proto, model)
    before = listing(tmp_path)
    assert_user_error(lepton("compile", model, "-o", tmp_path / "out.lepton", cwd=tmp_path), "m.onnx")
    assert listing(tmp_path) == before  # nothing half-written


def test_unsupported_ops_listed_in_one_line(tmp_path):
    from tests.test_errors import _custom_ops_model

    path = tmp_path / "custom.onnx"
    onnx.save(_custom_ops_model(), path)
    before = listing(tmp_path)
    assert_user_error(lepton("compile", path, cwd=tmp_path), "FancyNorm", "fancy_1", "fancy_2", "Mystery")
    assert listing(tmp_path) == before
    result = lepton("inspect", path)
    assert result.returncode == 0 and "would not lower" in result.stdout


def test_dynamic_dim_error_names_input_and_flag(tmp_path):
    from tests.test_errors import _slice_from_batch_model

    path = tmp_path / "slice.onnx"
    onnx.save(_slice_from_batch_model(), path)
    assert_user_error(lepton("compile", path, cwd=tmp_path), "'x'", "--input-shape x:")
    assert lepton("compile", path, "--input-shape", "x:3x4", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("args,fragments", [
    (["--target", "tpu"], ["unknown target 'tpu'"]),
    (["--target", "cuda", "--cuda-arch", "ampere"], ["not a CUDA architecture"]),
    (["--mcpu", "pentium-9000"], ["pentium-9000"]),
    (["--input-shape", "x:1xq"], ["--input-shape"]),
    (["--input-shape", "nope:1x16"], ["unknown input 'nope'"]),
])
def test_bad_options(tmp_path, mlp_path, args, fragments):
    before = listing(tmp_path)
    assert_user_error(lepton("compile", mlp_path, *args, cwd=tmp_path), *fragments)
    assert listing(tmp_path) == before


def test_nvcc_missing(tmp_path, mlp_path, monkeypatch):
    # In-process: hiding a CUDA toolkit installed in a standard place is not possible from outside.
    from click.testing import CliRunner

    import lepton_opt.targets.build as build
    from lepton_opt.cli import main

    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    result = CliRunner().invoke(main, ["compile", str(mlp_path), "--target", "cuda", "-o", str(tmp_path / "c")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nvcc" in lines[0], result.output
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifact")
    path = root / "mlp.onnx"
    onnx.save(tiny_mlp(), path)
    assert lepton("compile", path, "-o", root / "mlp.lepton").returncode == 0
    return root / "mlp.lepton"


@pytest.mark.parametrize("array,name,fragments", [
    (np.zeros((1, 16), np.float64), "x", ["'x'", "float64", "float32"]),
    (np.zeros((2, 16), np.float32), "x", ["'x'", "[2, 16]", "[1, 16]"]),
    (np.zeros((1, 16), np.float32), "z", ["unknown input 'z'"]),
])
def test_run_with_wrong_inputs(tmp_path, artifact, array, name, fragments):
    np.save(tmp_path / "in.npy", array)
    result = lepton("run", artifact, "--input", f"{name}={tmp_path / 'in.npy'}", "--output-dir", tmp_path / "o")
    assert_user_error(result, *fragments)
    assert not (tmp_path / "o").exists()


def test_run_bad_artifact_and_input_file(tmp_path, artifact):
    assert_user_error(lepton("run", tmp_path / "nothing.lepton"), "no such artifact")
    (tmp_path / "bad.npy").write_text("not numpy")
    assert_user_error(lepton("run", artifact, "--input", f"x={tmp_path / 'bad.npy'}"), "cannot read")
    assert_user_error(lepton("run", artifact, "--input", "x"), "NAME=FILE.npy")


def test_recompiling_replaces_the_artifact_atomically(tmp_path, mlp_path):
    out = tmp_path / "m.lepton"
    assert lepton("compile", mlp_path, "-o", out).returncode == 0
    first = json.loads((out / "manifest.json").read_text())["created"]
    assert lepton("compile", mlp_path, "-o", out).returncode == 0
    assert (out / "model.so").exists() and json.loads((out / "manifest.json").read_text())["created"] >= first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_verify_fails_on_fp16_overflow(tmp_path):
    # The middle MatMul overflows float16: the fp16 build outputs infinities where onnxruntime's
    # fp32 output is finite. Verification must fail and say so, not report "error 0, cosine 1".
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.full(shape, value, np.float32), name)
               for name, shape, value in [("w1", (8, 16), 40.0), ("w2", (16, 16), 40.0), ("w3", (16, 4), 1e-4)]]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["b"]), helper.make_node("MatMul", ["b", "w3"], ["y"])],
        "overflow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], weights)
    path = tmp_path / "overflow.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert np.isfinite(ort_run(onnx.load(path), {"x": np.ones((1, 8), np.float32)})["y"]).all()
    result = lepton("compile", path, "--precision", "fp16", "--verify", "-o", tmp_path / "o.lepton")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "non-finite where the reference is not" in result.stdout and "FAIL" in result.stdout
    assert "cosine 1.0" not in result.stdout


def test_verify_failure_exits_1(tmp_path):
    # With zero tolerance the float rounding differences of a real CNN are beyond tolerance.
    path = tmp_path / "resnet.onnx"
    onnx.save(resnet_cnn(), path)
    result = lepton("compile", path, "--verify", "--atol", "0", "--rtol", "0", "-o", tmp_path / "v.lepton")
    assert result.returncode == 1, result.stderr
    assert "FAIL" in result.stdout and "differ from onnxruntime" in result.stderr


def test_verify_data_checks_every_sample_given(tmp_path):
    """--verify-data runs every sample of the .npz (the seeded inputs of --verify may miss what
    real data hits): one sample that overflows float16 in the middle MatMul fails the check."""
    from click.testing import CliRunner
    from onnx import TensorProto, helper, numpy_helper

    from lepton_opt.cli import main

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in [("w1", (8, 16)), ("w2", (16, 4))]]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["a", "w2"], ["y"])],
        "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], weights)
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    calm = rng.standard_normal((5, 1, 8)).astype(np.float32)
    np.savez(tmp_path / "calm.npz", x=calm[:, 0])
    np.savez(tmp_path / "wild.npz", x=np.concatenate([calm[:, 0], np.full((1, 8), 3e4, np.float32)]))
    args = ["compile", str(path), "--precision", "fp16", "--no-default-block-list", "-o", str(tmp_path / "m.lepton")]
    runner = CliRunner()
    ok = runner.invoke(main, args + ["--verify-data", str(tmp_path / "calm.npz")])
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    assert "verified on calm.npz" in ok.stdout and "OK" in ok.stdout
    bad = runner.invoke(main, args + ["--verify-data", str(tmp_path / "wild.npz")])
    assert bad.exit_code == 1 and "non-finite where the reference is not" in bad.stdout, bad.stdout + bad.stderr
