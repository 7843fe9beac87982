"""Tuning: records measured, kept in the cache, applied by compile, shared across models, safe
under concurrent writers and damaged files, measured over TVM RPC on loopback.

Speed is not asserted here (benchmarks/README.md has the figures): the tests check that what
tuning records is what the build applies, and that tuned builds still equal onnxruntime.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_opt
from lepton_opt.targets import records
from lepton_opt.targets.build import resolve_target
from tests.models import ort_run, random_inputs, resnet_cnn
from tests.test_cli import assert_user_error, lepton


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv(records.CACHE_ENV, str(path))
    return path


def _conv_model(extra_layer: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Conv(3x3) -> Relu -> Conv(3x3) -> Relu [-> Conv(1x1)]: the model with ``extra_layer``
    shares its first two kernels (convolution + ReLU) with the one without."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["d" if extra_layer else "y"])]
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2, "w0"),
             numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.2, "w1")]
    if extra_layer:
        nodes.append(helper.make_node("Conv", ["d", "w2"], ["y"]))
        inits.append(numpy_helper.from_array(rng.standard_normal((16, 32, 1, 1)).astype(np.float32) * 0.2, "w2"))
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             [1, 16 if extra_layer else 32, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _assert_matches_ort(compiled, model, seeds=(0, 1)):
    for seed in seeds:
        feeds = random_inputs(model, seed=seed)
        for name, ref in ort_run(model, feeds).items():
            np.testing.assert_allclose(compiled.run(feeds)[name], ref, rtol=1e-4, atol=1e-4)


def _store(cache: Path) -> records.RecordStore:
    (directory,) = list((cache / "tuning").iterdir())
    return records.RecordStore(directory)


def test_tune_records_are_applied_by_compile_and_reused(cache):
    model = _conv_model()
    result = lepton_opt.tune(model, trials=10, confirm=False)  # confirmation: its own test below
    assert result.trials == 10 and not result.interrupted and result.confirm_note == "not asked for"
    names = {t.name for t in result.tasks}
    assert len(names) == 2, result.tasks  # the two convolutions; the rest has no knobs
    assert all(t.default_ms is not None and t.best_ms <= t.default_ms for t in result.tasks)
    assert result.records == records.cache_dir(resolve_target("llvm").tvm_target())
    store = _store(cache)
    explored = store.read_explored()
    assert sum(len(row["tiles"]) for row in explored.values()) == 10
    # Every measured schedule became a record; the best few of each kernel are kept.
    kept = sum(min(records.KEEP_PER_WORKLOAD, len(row["tiles"])) for row in explored.values())
    assert len(store.read()) == kept

    compiled = lepton_opt.compile(model)
    tuning = compiled.manifest["tuning"]
    assert tuning["kernels_tuned"] == 2 and tuning["records_read"] >= 2, tuning
    assert len(tuning["records_sha256"]) == 16  # builds from other records can be told apart
    _assert_matches_ort(compiled, model)
    untuned = lepton_opt.compile(model, use_cache=False).manifest["tuning"]
    assert untuned["kernels_tuned"] == 0 and untuned["records_sha256"] is None

    # A second run starts from the first: nothing measured twice.
    again = lepton_opt.tune(model, trials=6, confirm=False)
    assert again.trials == 6
    explored = _store(cache).read_explored()
    assert sum(len(row["tiles"]) for row in explored.values()) == 16


def test_tiles_timed_under_another_protocol_are_measured_again(cache):
    model = _conv_model()
    lepton_opt.tune(model, trials=4)
    store = _store(cache)
    assert store.path.name == records.target_key(resolve_target("llvm").tvm_target())
    lines = (store.path / records.EXPLORED).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows and all(row["protocol"] == records.PROTOCOL for row in rows)
    # The same rows, as an older lepton-opt wrote them (no protocol: warm repeats).
    (store.path / records.EXPLORED).write_text("".join(
        json.dumps({k: v for k, v in row.items() if k != "protocol"}) + "\n" for row in rows))
    assert store.read_explored() == {}
    again = lepton_opt.tune(model, trials=4)
    assert again.trials == 4
    measured = {key for row in store.read_explored().values() for key in row["tiles"]}
    first = {key for row in rows for key in row["tiles"]}
    assert measured == first  # the same (default-first) tiles, timed again, not taken as known


def test_confirmation_in_the_model_keeps_the_tile_fastest_there(cache):
    model = _conv_model()
    result = lepton_opt.tune(model, trials=12)
    assert result.confirmed >= 1 and result.confirm_note is None, result
    store = _store(cache)
    explored = {row["name"]: row["tiles"] for row in store.read_explored().values()}
    by_workload = {}
    for record in store.read():
        by_workload.setdefault(record.workload.mod.script(), []).append(float(record.run_secs[0]))
    confirmed = [t for t in result.tasks if t.model_tile is not None]
    assert len(confirmed) == result.confirmed
    for task in confirmed:
        top = sorted(explored[task.name], key=explored[task.name].get)[:4]
        assert task.model_tile in top + [task.default_tile]  # the best four timed alone, or the default
        assert task.model_ms > 0
    # The confirmed kernels' records are their in-model times (replacing the alone-timed ones):
    # the best record of each is the pick's in-model time.
    in_model = sorted(1e3 * min(secs) for secs in by_workload.values())
    for task in confirmed:
        assert any(abs(ms - task.model_ms) < 1e-6 for ms in in_model), (task, in_model)
    compiled = lepton_opt.compile(model)
    assert compiled.manifest["tuning"]["kernels_tuned"] == 2
    _assert_matches_ort(compiled, model)


def test_a_model_sharing_kernels_starts_from_the_records(cache):
    first, second = _conv_model(), _conv_model(extra_layer=True, seed=1)  # other weights, same kernels
    lepton_opt.tune(first, trials=8)
    compiled = lepton_opt.compile(second)
    assert compiled.manifest["tuning"]["kernels_tuned"] == 2  # the shared convolutions; the 1x1 is new
    _assert_matches_ort(compiled, second)
    result = lepton_opt.tune(second, trials=1)
    # The shared kernels' tiles are known from the first model's run: the trial goes to the new one.
    measured_now = [t for t in result.tasks if t.trials]
    known = [t for t in result.tasks if not t.trials]
    assert len(measured_now) == 1 and "conv2d" in measured_now[0].name, result.tasks
    assert len(known) == 2 and all(t.default_ms is not None and t.measured >= 1 for t in known), result.tasks


def test_records_dir_instead_of_the_cache(cache, tmp_path):
    model = _conv_model()
    out = tmp_path / "records"
    lepton_opt.tune(model, trials=4, records=out)
    assert not cache.exists()
    assert (out / records.WORKLOADS).is_file() and (out / records.RECORDS).is_file()
    assert lepton_opt.compile(model).manifest["tuning"]["kernels_tuned"] == 0
    compiled = lepton_opt.compile(model, records=[out])
    assert compiled.manifest["tuning"]["kernels_tuned"] >= 1
    _assert_matches_ort(compiled, model, seeds=(0,))


def test_truncated_and_corrupt_record_files_are_skipped_with_a_warning(cache):
    model = _conv_model()
    lepton_opt.tune(model, trials=6, confirm=False)
    store = _store(cache)
    table = store.path / records.RECORDS
    lines = table.read_text().splitlines(keepends=True)
    # A crash mid-write: the last line cut short; and garbage in the middle of the workloads.
    table.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    workloads = store.path / records.WORKLOADS
    workloads.write_text(workloads.read_text() + "{not json\n\n")
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        compiled = lepton_opt.compile(model)
    assert compiled.manifest["tuning"]["kernels_tuned"] >= 1
    assert any("truncated or corrupt" in w for w in compiled.warnings)
    _assert_matches_ort(compiled, model, seeds=(0,))
    # The next tuning run writes the tables anew, without the damaged lines.
    lepton_opt.tune(model, trials=2, confirm=False)
    notes = []
    kept = sum(min(records.KEEP_PER_WORKLOAD, len(row["tiles"])) for row in store.read_explored().values())
    assert len(records.RecordStore(store.path, notes.append).read()) >= kept - 1  # the line cut short is gone
    assert notes == []


def test_two_concurrent_tune_processes_leave_a_working_cache(cache, tmp_path):
    paths = []
    for i, model in enumerate([_conv_model(), resnet_cnn()]):
        paths.append(tmp_path / f"m{i}.onnx")
        onnx.save(model, paths[-1])
    env = {**os.environ, records.CACHE_ENV: str(cache), "TVM_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "lepton_opt.cli", "tune", str(p), "--trials", "12",
                               "--batch", "4", "--no-confirm"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in paths]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
    notes = []
    store = records.RecordStore(_store(cache).path, notes.append)
    kept = sum(min(records.KEEP_PER_WORKLOAD, len(row["tiles"])) for row in store.read_explored().values())
    assert sum(len(row["tiles"]) for row in store.read_explored().values()) == 24  # both runs' measurements
    assert notes == [] and len(store.read()) == kept
    for path in paths:
        model = onnx.load(path)
        compiled = lepton_opt.compile(model)
        assert compiled.manifest["tuning"]["kernels_tuned"] >= 1
        _assert_matches_ort(compiled, model, seeds=(0,))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_measurement_over_an_rpc_tracker_on_loopback(cache):
    pytest.importorskip("tornado")  # TVM's tracker runs on tornado
    port = _free_port()
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                str(port), "--port-end", str(port + 1)], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}",
                                   "--key", "lepton-test", "--host", "127.0.0.1"], env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from tvm.s_tir import meta_schedule as ms

        config = ms.runner.RPCConfig(tracker_host="127.0.0.1", tracker_port=port, tracker_key="lepton-test")
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if config.count_num_servers(allow_missing=True) > 0:
                    break
            except Exception:  # noqa: BLE001 - the tracker is still starting
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the RPC server did not register with the tracker")
        model = _conv_model()
        result = lepton_opt.tune(model, trials=4, rpc_tracker=f"127.0.0.1:{port}", rpc_key="lepton-test")
        assert result.trials == 4 and all(t.default_ms for t in result.tasks)
        compiled = lepton_opt.compile(model)
        assert compiled.manifest["tuning"]["kernels_tuned"] == 2
        _assert_matches_ort(compiled, model, seeds=(0,))
        # A key nobody registered under is a clear error, not a hang.
        with pytest.raises(lepton_opt.LeptonError, match="no device registered under --rpc-key 'nobody'"):
            lepton_opt.tune(model, trials=1, rpc_tracker=f"127.0.0.1:{port}", rpc_key="nobody")
    finally:
        for proc in (server, tracker):
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)


def test_ctrl_c_keeps_what_was_measured(cache, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_model(extra_layer=True), path)
    env = {**os.environ, records.CACHE_ENV: str(cache), "TVM_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lepton_opt.cli", "tune", str(path), "--budget", "10m",
                             "--batch", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    explored = None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(2)
        found = list((cache / "tuning").glob("*/" + records.EXPLORED)) if (cache / "tuning").is_dir() else []
        if found:
            explored = found[0]
            break
    assert explored is not None, "no records were merged within 5 minutes"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: the records measured so far are kept" in stderr
    assert "Traceback" not in stderr
    store = records.RecordStore(explored.parent)
    assert len(store.read()) >= 2
    assert lepton_opt.compile(onnx.load(path)).manifest["tuning"]["kernels_tuned"] >= 1


def test_cli_tune_list_and_clear(cache, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_model(), path)
    env = {records.CACHE_ENV: str(cache)}
    result = lepton("tune", path, "--trials", "3", env=env)
    assert result.returncode == 0, result.stderr
    assert "candidates measured" in result.stdout and "fused_conv2d" in result.stdout
    listed = lepton("tune", "--list", env=env)
    assert listed.returncode == 0 and "llvm-" in listed.stdout and "3" in listed.stdout, listed.stdout
    compiled = lepton("compile", path, "-o", tmp_path / "m.lepton", env=env)
    assert compiled.returncode == 0 and "kernels from tuning records" in compiled.stdout, compiled.stdout
    manifest = json.loads((tmp_path / "m.lepton" / "manifest.json").read_text())
    assert manifest["tuning"]["kernels_tuned"] >= 1
    cleared = lepton("tune", "--clear", env=env)
    assert cleared.returncode == 0 and "removed 1 record directory" in cleared.stdout
    assert "no tuning records" in lepton("tune", "--list", env=env).stdout


@pytest.mark.parametrize("args, fragment", [
    (["--budget", "soon"], "--budget 'soon'"),
    (["--trials", "0"], "must be positive"),
    (["--rpc-tracker", "127.0.0.1:9"], "--rpc-tracker and --rpc-key go together"),
    (["--rpc-tracker", "nowhere", "--rpc-key", "k"], "give HOST:PORT"),
    (["--target", "cuda"], "tuning covers --target llvm"),
])
def test_cli_tune_bad_options_are_one_line_errors(cache, mlp_path, args, fragment):
    assert_user_error(lepton("tune", mlp_path, *args, env={records.CACHE_ENV: str(cache)}), fragment)


def test_cli_tune_unreachable_tracker(cache, mlp_path):
    port = _free_port()
    assert_user_error(lepton("tune", mlp_path, "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "k",
                             env={records.CACHE_ENV: str(cache)}), "cannot reach an RPC tracker")
