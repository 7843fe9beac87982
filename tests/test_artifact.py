"""Artifacts: save -> load_compiled -> run gives the compile-time results; the manifest is complete."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest

import lepton_opt
from tests.models import random_inputs, transformer_layer


def test_save_load_run_round_trip(tmp_path):
    model = transformer_layer(batch="N")
    path = tmp_path / "layer.onnx"
    onnx.save(model, path)
    compiled = lepton_opt.compile(path)
    feeds = random_inputs(model, seed=0, shapes={"N": 2})
    expected = compiled.run(feeds)

    saved = compiled.save(tmp_path / "layer.lepton")
    loaded = lepton_opt.load_compiled(saved)
    got = loaded.run(feeds)
    assert list(got) == ["y"]
    np.testing.assert_array_equal(got["y"], expected["y"])
    assert lepton_opt.verify(loaded, path, feeds=feeds).ok

    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest == loaded.manifest
    assert manifest["format"] == "lepton-opt-artifact" and manifest["format_version"] == 2
    assert manifest["inputs"] == [{"name": "x", "shape": ["N", 16, 64], "dtype": "float32"},
                                  {"name": "attention_mask", "shape": ["N", 16], "dtype": "int64"}]
    assert manifest["outputs"] == [{"name": "y", "shape": ["N", 16, 64], "dtype": "float32"}]
    assert manifest["source"] == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                  "opset": 17}
    assert manifest["target"]["kind"] == "llvm" and manifest["target"]["mcpu"]
    assert manifest["tvm_target"]["kind"] == "llvm"

    # A saved artifact can be saved again (copied), e.g. by a deployment pipeline.
    again = lepton_opt.load_compiled(loaded.save(tmp_path / "copy.lepton"))
    np.testing.assert_array_equal(again.run(feeds)["y"], expected["y"])


def test_outputs_keep_graph_order_and_constant_outputs(tmp_path):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [2], [1, 2])),
             helper.make_node("Neg", ["x"], ["n"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("n", "c", "r")])
    compiled = lepton_opt.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    out = compiled.run({"x": np.array([-1.0, 3.0], np.float32)})
    assert list(out) == ["n", "c", "r"]
    np.testing.assert_array_equal(out["n"], [1.0, -3.0])
    np.testing.assert_array_equal(out["c"], [1.0, 2.0])
    np.testing.assert_array_equal(out["r"], [0.0, 3.0])


def test_an_input_that_is_also_an_output_keeps_its_name():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = lepton_opt.compile(model)
    assert [i["name"] for i in compiled.inputs] == ["x"]
    out = compiled.run({"x": np.array([1.0, -2.0], np.float32)})
    assert list(out) == ["y", "x"]
    np.testing.assert_array_equal(out["x"], [1.0, -2.0])
    optimized = lepton_opt.optimize(model).model
    assert [i.name for i in optimized.graph.input] == ["x"]
    assert [o.name for o in optimized.graph.output] == ["y", "x"]
    onnx.checker.check_model(optimized)


def test_repeated_runs_return_arrays_no_later_run_overwrites():
    """run() hands outputs over without a copy and reuses its input buffers: results of earlier
    runs must stay as they were, a caller writing into a result must not change later ones (a
    constant output, an input passed through), and threads calling run() at once get their own
    answers."""
    import threading

    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [3], [1, 2, 3]))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in ("r", "c", "x")])
    compiled = lepton_opt.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    results = []
    for k in range(4):
        x = np.array([k, -k, 2 * k], np.float32)
        out = compiled.run({"x": x})
        x[:] = 99  # the caller reuses its input array
        results.append(out)
        for name in ("r", "c", "x"):
            out[name][:] = -7  # and writes into what it got... after checking it below
        results[-1] = compiled.run({"x": np.array([k, -k, 2 * k], np.float32)})
    for k, out in enumerate(results):
        np.testing.assert_array_equal(out["r"], [k, 0, 2 * k])
        np.testing.assert_array_equal(out["c"], [1, 2, 3])
        np.testing.assert_array_equal(out["x"], [k, -k, 2 * k])

    errors = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(200):
            x = rng.standard_normal(3).astype(np.float32)
            out = compiled.run({"x": x})
            if not (np.array_equal(out["r"], np.maximum(x, 0)) and np.array_equal(out["x"], x)):
                errors.append(seed)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


_RUNTIME_ONLY_SCRIPT = """
import importlib.abc, json, sys
BLOCK = {"onnx", "onnxruntime", "onnxscript", "onnx_ir", "sympy"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError("blocked for the test: " + name)
sys.meta_path.insert(0, Blocker())
import numpy as np
import lepton_opt
model = lepton_opt.load_compiled(sys.argv[1])
out = model.run({"x": np.load(sys.argv[2])})
np.save(sys.argv[3], out["y"])
print(json.dumps({"imported": sorted(n for n in sys.modules if n.split(".")[0] in BLOCK or n == "lepton_opt.api"),
                  "relax": "tvm.relax" in sys.modules}))
"""


def test_artifacts_run_with_the_tvm_runtime_alone(tmp_path):
    """A serving image: onnx, onnxruntime, onnxscript, onnx-ir are not importable; loading and
    running an artifact never needs them, with TVM's full library or its runtime library only."""
    import subprocess
    import sys

    from tests.models import tiny_mlp

    model = tiny_mlp()
    compiled = lepton_opt.compile(model)
    path = compiled.save(tmp_path / "m.lepton")
    spec = compiled.inputs[0]
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 2 for d in spec["shape"]])
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    expected = compiled.run({spec["name"]: x.astype(np.float32)})[compiled.outputs[0]["name"]]
    script = _RUNTIME_ONLY_SCRIPT.replace('"x"', repr(spec["name"])).replace('out["y"]', f'out[{compiled.outputs[0]["name"]!r}]')
    for runtime_lib in ("0", "1"):
        result = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                                capture_output=True, text=True, env={**__import__("os").environ, "TVM_USE_RUNTIME_LIB": runtime_lib})
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["imported"] == [], report
        assert report["relax"] is (runtime_lib == "0")  # the runtime library has no compiler at all
        np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_artifact_for_a_cpu_feature_this_host_lacks_is_refused(tmp_path, monkeypatch):
    """An AVX-512 build loaded on a CPU without AVX-512 would die of SIGILL on its first run:
    load_compiled (and the CLI, exit 2) refuse it with one line instead. The host here is made to
    lack a feature the artifact was built for (its manifest asks for +avx2 at least)."""
    import subprocess
    import sys

    from lepton_opt.errors import ArtifactError
    from lepton_opt.targets import artifact
    from tests.models import tiny_mlp

    path = lepton_opt.compile(tiny_mlp()).save(tmp_path / "m.lepton")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["target"]["mattr"] = sorted({*manifest["target"].get("mattr", []), "+avx2"})
    (path / "manifest.json").write_text(json.dumps(manifest))
    host = set(artifact._CPUINFO_FLAGS.values()) - {"avx2"}
    monkeypatch.setattr(artifact, "host_cpu_flags", lambda: host)
    with pytest.raises(ArtifactError, match="compiled for a CPU with avx2, which this CPU lacks"):
        lepton_opt.load_compiled(path)
    script = ("import sys; from lepton_opt.targets import artifact; "
              f"artifact.host_cpu_flags = lambda: {sorted(host)!r}; "
              "from lepton_opt.cli import main; sys.argv = ['lepton-opt', 'run', sys.argv[1]]; main()")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "illegal instruction" in result.stderr and "Traceback" not in result.stderr
    monkeypatch.undo()
    if {"avx2"} <= (artifact.host_cpu_flags() or set()):
        lepton_opt.load_compiled(path)  # the real host has it: loads


def test_a_portable_build_for_a_named_cpu_with_features_removed(tmp_path):
    """--mcpu x86-64-v3 (an AVX2 fleet) with --mattr: the manifest records what the code may use,
    the build matches onnxruntime here, and the saved directory is readable by other users."""
    import stat

    from click.testing import CliRunner

    from lepton_opt.cli import main
    from tests.models import ort_run, random_inputs, tiny_mlp

    model = tiny_mlp()
    compiled = lepton_opt.compile(model, mcpu="x86-64-v3", mattr="+fma,-avx512f")
    target = compiled.manifest["target"]
    assert target["mcpu"] == "x86-64-v3" and target["mattr"] == ["+fma", "-avx512f"], target
    feeds = random_inputs(model, seed=0)
    np.testing.assert_allclose(compiled.run(feeds)["y"], ort_run(model, feeds)["y"], rtol=1e-4, atol=1e-4)
    path = compiled.save(tmp_path / "portable.lepton")
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044 for f in path.iterdir())
    onnx.save(model, tmp_path / "m.onnx")
    bad = CliRunner().invoke(main, ["compile", str(tmp_path / "m.onnx"), "--mattr", "avx2"])
    assert bad.exit_code == 2 and "+name or -name" in bad.stderr, bad.stderr


def test_cuda_host_code_takes_mcpu():
    from lepton_opt.targets.build import find_nvcc, resolve_target

    if find_nvcc() is None:
        pytest.skip("no nvcc")
    spec = resolve_target("cuda", mcpu="x86-64-v3", cuda_arch="sm_90")
    assert spec.mcpu == "x86-64-v3" and spec.mattr == ()


def test_repeated_runs_skip_validation_but_not_its_errors():
    """After a validated call, the same inputs again (names, shapes, types) skip the full check;
    anything else is checked in full: a wrong dtype is still the one-line error, a non-contiguous
    or a differently shaped array still gives onnxruntime's result."""
    from lepton_opt.errors import InputError
    from tests.models import ort_run

    model = transformer_layer(batch="B", seq=8)
    compiled = lepton_opt.compile(model)
    feeds = random_inputs(model, seed=0, shapes={"B": 2})
    for seed in (0, 1):  # the second call takes the fast path with new values
        feeds = random_inputs(model, seed=seed, shapes={"B": 2})
        np.testing.assert_allclose(compiled.run(feeds)["y"], ort_run(model, feeds)["y"], rtol=1e-4, atol=1e-4)
    assert compiled._validated is not None
    wrong = {**feeds, "x": feeds["x"].astype(np.float64)}
    with pytest.raises(InputError, match="dtype float64"):
        compiled.run(wrong)
    strided = {**feeds, "x": np.asfortranarray(feeds["x"])}
    np.testing.assert_allclose(compiled.run(strided)["y"], ort_run(model, feeds)["y"], rtol=1e-4, atol=1e-4)
    other = random_inputs(model, seed=2, shapes={"B": 3})
    np.testing.assert_allclose(compiled.run(other)["y"], ort_run(model, other)["y"], rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="missing input"):
        compiled.run({k: v for k, v in other.items() if k != "x"})
