"""``--json``, ``-q``/``-v``, exit codes and unwrapped piped output of the command line, run
in-process with click's CliRunner (stdout and stderr apart, neither a terminal).

Every command's ``--json`` prints one strict JSON document on stdout (no NaN or Infinity:
null, and a note), with ``schema_version`` 1 and the command's name; stderr keeps the
progress, warnings and the error line.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import lepton_opt
from lepton_opt import cli
from lepton_opt.targets import records
from tests.models import tiny_mlp


def _raise(constant: str):
    raise ValueError(f"not strict JSON: {constant}")


def invoke(*args, env=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], env=env)


def document(*args, command: str, exit_code: int = 0) -> dict:
    """Run ``lepton-opt ARGS --json``; the exit code it must have; its one strict JSON document."""
    result = invoke(*args, "--json")
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    doc = json.loads(result.stdout, parse_constant=_raise)
    assert doc["schema_version"] == 1 and doc["command"] == command, doc
    return doc


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "mlp.lepton"
    lepton_opt.compile(tiny_mlp()).save(path)
    return path


# ------------------------------------------------------------------------------- --json, per command
def test_inspect(mlp_path):
    doc = document("inspect", mlp_path, command="inspect")
    assert doc["inputs"] == [{"name": "x", "dtype": "FLOAT", "shape": [1, 16]}]
    assert doc["outputs"][0]["name"] == "y" and doc["ops"] == {"MatMul": 2, "Add": 2, "Relu": 2}
    assert doc["nodes"] == 6 and doc["parameters"] == 16 * 32 + 32 + 32 * 8 + 8
    assert doc["lowers"] is True and doc["unsupported"] == {}


def test_compile_with_verify(tmp_path, mlp_path):
    out = tmp_path / "mlp.lepton"
    doc = document("compile", mlp_path, "-o", out, "--verify", command="compile")
    assert doc["output"] == str(out) and (out / "manifest.json").exists() and (out / "model.so").exists()
    assert doc["target"]["kind"] == "llvm" and doc["model"] == str(mlp_path)
    assert doc["outputs"] == [{"name": "y", "shape": [1, 8], "dtype": "float32"}]
    assert doc["ok"] is True and doc["verify"]["ok"] is True and doc["verify"]["atol"] == 1e-4
    assert [o["name"] for o in doc["verify"]["outputs"]] == ["y"] and doc["verify"]["outputs"][0]["cosine"] > 0.999
    assert doc["precision"] is None and doc["tuning"]["kernels_tuned"] == 0 and doc["seconds"] > 0


def test_compile_verify_failure_prints_the_document_and_exits_1(tmp_path, mlp_path):
    # fp16 against onnxruntime fp32 with zero tolerance: the check fails (exit 1), the document is printed.
    doc = document("compile", mlp_path, "-o", tmp_path / "h.lepton", "--precision", "fp16", "--verify",
                   "--atol", "0", "--rtol", "0", command="compile", exit_code=1)
    assert doc["ok"] is False and doc["verify"]["ok"] is False and doc["verify"]["outputs"][0]["max_abs"] > 0
    assert doc["precision"]["precision"] == "fp16" and doc["precision"]["converted_nodes"] > 0


def test_run(tmp_path, artifact):
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    outs = tmp_path / "outs"
    doc = document("run", artifact, "--input", f"x={tmp_path / 'x.npy'}", "-o", outs, command="run")
    assert doc["inputs"] == {"x": {"shape": [1, 16], "dtype": "float32", "file": str(tmp_path / "x.npy")}}
    y = doc["outputs"]["y"]
    assert y["shape"] == [1, 8] and y["dtype"] == "float32" and y["file"] == str(outs / "y.npy")
    written = np.load(y["file"])
    assert y["min"] == pytest.approx(float(written.min())) and y["max"] == pytest.approx(float(written.max()))
    assert doc["notes"] == []


def test_run_non_finite_outputs_are_null_with_a_note(artifact):
    # Seeded inputs are finite; an input of infinities makes inf - inf = nan in the MatMul.
    path = artifact.parent / "inf.npy"
    np.save(path, np.full((1, 16), np.inf, np.float32))
    doc = document("run", artifact, "--input", f"x={path}", command="run")
    y = doc["outputs"]["y"]
    assert y["min"] is None and y["mean"] is None, y
    assert any("null stands for a non-finite number" in n and "outputs.y.min" in n for n in doc["notes"]), doc["notes"]


def test_profile_and_run_profile(artifact, mlp_path):
    doc = document("profile", mlp_path, "--repeat", "2", command="profile")
    kernels = doc["kernels"]
    assert kernels and abs(sum(k["share"] for k in kernels) - 1) < 1e-6
    assert all(k["why"] for k in kernels) and any(k["rule"] == "tiled_reduction" for k in kernels)
    assert doc["peak"]["gflops"] > 0
    run = document("run", artifact, "--profile", "--repeat", "2", command="run")
    assert {k["name"] for k in run["profile"]["kernels"]} == {k["name"] for k in kernels}
    # the table: the top kernels, a row for the rest, the measured machine in a note on stderr
    table = invoke("run", artifact, "--profile", "--repeat", "2", "--top", "1")
    assert table.exit_code == 0, table.stderr
    assert "why" in table.stdout and "more" in table.stdout and "measured" in table.stderr


def test_auto(tmp_path, mlp_path):
    out = tmp_path / "auto"
    doc = document("auto", mlp_path, "--max-error", "1e-6", "--budget", "2m", "-o", out, command="auto")
    assert doc["chosen"] == "fp32" and doc["replay"].startswith("lepton-opt compile")
    assert {c["name"] for c in doc["candidates"]} >= {"fp32", "int8-minmax", "pruned", "fp32-tuned"}
    assert (out / "model.lepton" / "manifest.json").is_file() and (out / "report.json").is_file()
    assert invoke("auto", mlp_path, "--max-accuracy-drop", "-1").exit_code == 2


def test_optimize(tmp_path, mlp_path):
    out = tmp_path / "o.onnx"
    doc = document("optimize", mlp_path, "-o", out, command="optimize")
    assert doc["output"] == str(out) and onnx.load(out).graph.node
    assert doc["level"] == "O2" and doc["nodes_before"] == 6 and doc["nodes_after"] == len(onnx.load(out).graph.node)
    changed = [p["name"] for p in doc["passes"] if p["changed"]]
    assert changed and all(p["runs"] >= 1 for p in doc["passes"]), doc["passes"]
    assert doc["warnings"] == [] and doc["precision"] is None


def test_quantize(tmp_path, mlp_path):
    out = tmp_path / "q.onnx"
    result = invoke("quantize", mlp_path, "-o", out, "--calibration-samples", "2", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout, parse_constant=_raise)
    assert doc["command"] == "quantize" and doc["output"] == str(out) and out.exists()
    assert doc["mode"] == "static" and sum(doc["quantized"].values()) == 2
    assert any("no --data" in w for w in doc["warnings"])
    assert "warning: no --data" in result.stderr  # stderr is unchanged by --json


def test_prune(tmp_path, mlp_path):
    out = tmp_path / "p.onnx"
    doc = document("prune", mlp_path, "-s", "0.3", "-o", out, command="prune")
    assert doc["output"] == str(out) and out.exists() and doc["method"] == "channel"
    layer = doc["layers"][0]
    assert doc["params_after"] < doc["params_before"] and layer["shape_after"] < layer["shape_before"]
    assert doc["scan"] is None and doc["notes"]


def test_tune_and_its_cache(tmp_path, mlp_path, monkeypatch):
    monkeypatch.setenv(records.CACHE_ENV, str(tmp_path / "cache"))
    doc = document("tune", mlp_path, "--trials", "1", "--batch", "1", "--no-confirm", command="tune")
    assert doc["action"] == "tune" and doc["trials"] == 1 and not doc["interrupted"]
    assert doc["kernels"] and all("fused_matmul" in k["name"] for k in doc["kernels"])
    listed = document("tune", "--list", command="tune")
    assert listed["action"] == "list" and [s["records"] for s in listed["stores"]] == [1]
    assert listed["stores"][0]["directory"] == doc["records"].rsplit("/", 1)[-1]


def test_bench(mlp_path, monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "1")  # bench sets it to --threads; restored after the test
    doc = document("bench", mlp_path, "--variants", "ort", "--threads", "1", "--rounds", "2", "--block", "2",
                   "--warmup", "0", "--samples", "1", "--no-memory", command="bench")
    assert doc["ok"] is True and [v["name"] for v in doc["variants"]] == ["ort"]
    assert doc["variants"][0]["status"] == "ok" and doc["batches"] == [1] and doc["report"] is None


def test_debug(mlp_path):
    doc = document("debug", mlp_path, "--passes", "cse", command="debug")
    assert doc["ok"] is True and doc["mode"] == "passes" and doc["compared"] == 6


# ------------------------------------------------------------------------------- errors and exit codes
def test_a_user_error_leaves_stdout_empty_and_exits_2(tmp_path):
    result = invoke("inspect", tmp_path / "missing.onnx", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no such file" in lines[0], result.stderr


def test_an_internal_error_exits_3(mlp_path, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.delenv("LEPTON_OPT_DEBUG", raising=False)
    monkeypatch.setattr(lepton_opt, "inspect_model", broken)
    for json_flag in ([], ["--json"]):
        result = invoke("inspect", mlp_path, *json_flag)
        assert result.exit_code == cli.INTERNAL_ERROR_EXIT_CODE == 3, result.output
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("internal error: RuntimeError: boom"), result.stderr


# ------------------------------------------------------------------------------- -q and -v
def test_quiet_prints_the_result_line_only(tmp_path, mlp_path, artifact):
    loud = invoke("optimize", mlp_path, "-o", tmp_path / "a.onnx")
    assert loud.exit_code == 0 and "fold-constants" in loud.stdout  # the per-pass table
    for args in (["-q", "optimize", mlp_path], ["optimize", mlp_path, "--quiet"]):
        quiet = invoke(*args, "-o", tmp_path / "b.onnx")
        assert quiet.exit_code == 0, quiet.output
        assert [line for line in quiet.stdout.splitlines() if line.strip()] == [
            f"optimized {mlp_path} -> {tmp_path / 'b.onnx'} in {quiet.stdout.split(' in ')[-1].strip()}"]
    assert "note: seeded random data for x" in invoke("run", artifact).stderr
    quiet = invoke("-q", "run", artifact)
    assert quiet.exit_code == 0 and quiet.stderr == "" and "[1, 8]" in quiet.stdout  # the outputs stay


def test_quiet_and_verbose_exclude_each_other(mlp_path):
    result = invoke("-q", "inspect", mlp_path, "-v")
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_verbose_shows_lepton_opt_log_records(mlp_path, monkeypatch):
    real = lepton_opt.inspect_model

    def logging_inspect(*args, **kwargs):
        logging.getLogger("lepton_opt.passes.test").info("an informational record")
        logging.getLogger("onnx_ir.test").warning("another library's record")
        return real(*args, **kwargs)

    monkeypatch.delenv("LEPTON_OPT_DEBUG", raising=False)
    monkeypatch.setattr(lepton_opt, "inspect_model", logging_inspect)
    assert "informational record" not in invoke("inspect", mlp_path).stderr
    for args in (["-v", "inspect", mlp_path], ["inspect", mlp_path, "--verbose"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "INFO lepton_opt.passes.test: an informational record" in result.stderr
        assert "another library's record" not in result.stderr
    assert logging.getLogger("lepton_opt").handlers == []  # nothing left configured


# ------------------------------------------------------------------------------- piped output
def test_piped_output_is_not_wrapped(tmp_path):
    # rich wraps at COLUMNS (else at the terminal's width, else 80) even when stdout is not a terminal.
    directory = tmp_path / ("d" * 60)
    directory.mkdir()
    path = directory / ("model_with_a_long_name_" * 5 + ".onnx")
    onnx.save(tiny_mlp(), path)
    result = invoke("inspect", path, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    header = [line for line in result.stdout.splitlines() if "opset 17" in line]
    assert header == [f"{path}  opset 17, 6 nodes, 808 parameters"], result.stdout
    assert all(len(line) < 80 for line in result.stdout.splitlines()[1:])  # tables stay as wide as their content
