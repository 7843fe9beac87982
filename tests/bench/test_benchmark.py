"""``lepton_opt.benchmark`` and ``lepton-opt bench``: measurements, accuracy, reports, bad input.

Timing figures are never asserted (the machine is shared); what is asserted is that every
number comes from the runs it claims to (counts, percentiles, ratios from the same run) and
that accuracy figures equal what numpy computes from onnxruntime's own outputs.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import lepton_opt
from lepton_opt.evaluation.accuracy import accuracy_stats, compare
from lepton_opt.evaluation.latency import LatencyStats, time_interleaved
from lepton_opt.bench.report import write_reports
from lepton_opt.errors import InputError, OptionError
from tests.models import resnet_cnn, tiny_mlp
from tests.test_cli import assert_user_error, lepton

FAST = {"threads": 1, "rounds": 3, "block": 3, "warmup": 1, "memory": False}  # 6 timed runs per variant


def _ort_outputs(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture(scope="module")
def cnn_result():
    """One benchmark of a small CNN, shared by the tests that read it."""
    return lepton_opt.benchmark(resnet_cnn(batch="N"), variants="fp32,ort-opt,int8", batches=[1, 3], **FAST)


def test_variants_are_measured_interleaved_with_consistent_statistics(cnn_result):
    r = cnn_result
    assert [v.name for v in r.variants] == ["ort", "fp32", "ort-opt", "int8"]  # the baseline first
    assert [v.status for v in r.variants] == ["ok", "ok", "ok", "ok"]
    assert r.batches == [1, 3] and r.rounds == {1: 3, 3: 3} and r.block == {1: 3, 3: 3}
    assert any("int8 variants: calibrated on 32 seeded random inputs" in n for n in r.notes)
    for name in ("ort", "fp32", "ort-opt", "int8"):
        v = r.variant(name)
        assert v.build_s.keys() == {1, 3} and v.artifact_bytes > 0
        for batch in (1, 3):
            stats = v.latency[batch]
            assert len(stats.times_ms) == 6 and all(t > 0 for t in stats.times_ms)
            assert stats.p50 == pytest.approx(np.median(stats.times_ms))
            assert stats.throughput == pytest.approx(batch * 1e3 / stats.p50)
            # Paired by round: 3 rounds of 2 timed runs each.
            base = np.reshape(r.variant("ort").latency[batch].times_ms, (3, 2))
            ours = np.reshape(stats.times_ms, (3, 2))
            assert r.speedup(name, batch) == pytest.approx(np.median(np.median(base, 1) / np.median(ours, 1)))
    assert r.speedup("ort") == 1.0
    assert len(r.ort_spinning_alone[1].times_ms) == 6


def test_unavailable_variants_are_reported_not_measured(monkeypatch, tmp_path):
    import dataclasses

    from lepton_opt.bench import variants

    spec = dataclasses.replace(variants.VARIANTS["int8"], unavailable="no int8 kernels for this target")
    monkeypatch.setitem(variants.VARIANTS, "int8", spec)
    r = lepton_opt.benchmark(resnet_cnn(), variants="fp32,int8", **FAST)
    assert [v.status for v in r.variants] == ["ok", "ok", "unavailable"]
    assert r.variant("int8").reason == "no int8 kernels for this target" and not r.variant("int8").latency
    assert r.speedup("int8") is None
    md = write_reports([r], tmp_path)["md"].read_text()
    assert "unavailable: no int8 kernels for this target" in md


def test_accuracy_against_onnxruntime_on_seeded_inputs(cnn_result):
    fp32 = cnn_result.variant("fp32").accuracy
    assert fp32.samples == 8 and fp32.max_abs < 1e-4 and fp32.cosine > 0.99999
    assert fp32.classifier_output == "logits" and fp32.top1 == 1.0 and fp32.top5 == 1.0
    assert fp32.task_accuracy is None
    assert cnn_result.variant("ort").accuracy.max_abs == 0.0  # the reference against itself


def test_reports_markdown_html_json(cnn_result, tmp_path):
    (tmp_path / "keep.txt").write_text("user file")
    paths = write_reports([cnn_result], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "report.html", "report.json", "report.md"]
    md = paths["md"].read_text()
    assert "| variant | p50 ms |" in md and "| fp32 |" in md
    assert "| int8 |" in md and "Batch sweep" in md
    page = paths["html"].read_text()
    # Plots inline (speed-up, accuracy, latency distribution, throughput over batch, kernels), no
    # external resources.
    assert page.count("<svg") == 5 and "src=\"http" not in page and "<link" not in page
    # Where the time goes: the kernel table of each lepton-opt build (not of onnxruntime's)
    assert "Where the time goes, fp32" in md and "Where the time goes, int8" in md and "| kernel | share |" in md
    assert cnn_result.variant("ort").kernels is None
    kernels = cnn_result.variant("fp32").kernels
    assert kernels and all(k["why"] for k in kernels) and kernels[0]["share"] >= kernels[-1]["share"]
    data = json.loads(paths["json"].read_text())["results"][0]
    fp32 = next(v for v in data["variants"] if v["name"] == "fp32")
    assert fp32["latency"]["1"]["times_ms"] == cnn_result.variant("fp32").latency[1].times_ms
    assert data["speedup_vs_ort"]["fp32"]["3"] == pytest.approx(cnn_result.speedup("fp32", 3))
    assert data["machine"]["versions"]["onnxruntime"] == ort.__version__
    # The JSON holds everything the reports show: rendered again from it, they are identical.
    from lepton_opt.bench.report import html_page, load_results, markdown

    again = load_results(paths["json"])
    assert markdown(again) == md and html_page(again) == page


def test_html_report_without_matplotlib_says_why_it_has_no_plots(cnn_result, monkeypatch):
    from lepton_opt.bench import report

    monkeypatch.setattr(report, "plots_available", lambda: False)
    page = report.html_page([cnn_result])
    assert "<svg" not in page and "pip install &#x27;lepton-opt[bench]&#x27;" in page and ">fp32<" in page
    assert "<table>" in page


def test_dataset_with_labels_gives_task_accuracy_and_pads_the_last_batch(tmp_path):
    model = resnet_cnn(batch="N", num_classes=10)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 3, 32, 32)).astype(np.float32)
    (scores,) = _ort_outputs(model, {"input": x})
    labels = scores.argmax(1)
    labels[:4] = (labels[:4] + 1) % 10  # 6 of 10 right
    np.savez(tmp_path / "data.npz", input=x)
    np.save(tmp_path / "labels.npy", labels)
    r = lepton_opt.benchmark(model, variants="fp32", batches=[4], data=tmp_path / "data.npz",
                             labels=tmp_path / "labels.npy", **FAST)
    for name in ("ort", "fp32"):
        acc = r.variant(name).accuracy
        assert acc.samples == 10  # three batches of 4, the last one padded, padding dropped
        assert acc.task_accuracy == pytest.approx(0.6)
    assert "10 samples, labelled" in r.accuracy_inputs


def test_pruned_variants_run_the_pruned_model_on_both_engines():
    from lepton_opt.bench.variants import PruneOptions

    r = lepton_opt.benchmark(resnet_cnn(), variants="fp32,pruned,ort-pruned", prune=PruneOptions("channel", 0.5),
                             **FAST)
    assert [v.status for v in r.variants] == ["ok"] * 4
    assert "channel pruning, 50% of the channels" in " ".join(r.notes)
    for name in ("pruned", "ort-pruned"):
        acc = r.variant(name).accuracy
        assert acc.max_abs > 1e-3 and acc.cosine < 0.99999  # the model changed, and accuracy says so
    assert r.variant("pruned").accuracy.max_abs == pytest.approx(r.variant("ort-pruned").accuracy.max_abs, rel=1e-2)
    assert r.variant("pruned").artifact_bytes < r.variant("fp32").artifact_bytes
    assert r.variant("ort-pruned").artifact_bytes < r.variant("ort").artifact_bytes
    assert r.speedup("pruned", baseline="fp32") is not None and r.speedup("fp32", baseline="nope") is None


def test_accuracy_stats_top_k_and_relative_error():
    ref = {"s": np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])}
    got = {"s": ref["s"].copy()}
    got["s"][0, 1] = 9.0  # row 0: arg-max moves to class 1; class 6 (the reference's) still in the top 5
    got["s"][1, 0] = -9.0  # row 1: the reference's class 0 drops out of the top 5
    stats = accuracy_stats(ref, got, 2, labels=np.array([6, 1]))
    assert stats.top1 == 0.0 and stats.top5 == 0.5 and stats.task_accuracy == 0.5
    assert stats.max_abs == 15.0 and stats.max_rel == pytest.approx(15.0 / 6.0)


def test_latency_stats_and_shuffled_interleaving():
    calls = []
    engines = [lambda i=i: calls.append(i) for i in range(3)]
    times = time_interleaved(engines, rounds=20, warmup=2, shuffle_seed=0, block=3, discard=1)
    assert [len(t) for t in times] == [40, 40, 40]  # 20 rounds x (3 runs - 1 untimed)
    rounds = [tuple(calls[6 + 9 * k: 15 + 9 * k]) for k in range(20)]
    assert all(sorted(r) == [0, 0, 0, 1, 1, 1, 2, 2, 2] for r in rounds) and len(set(rounds)) > 1
    assert all(r[0] == r[1] == r[2] for r in rounds)  # blocks of one engine in a row
    stats = LatencyStats(2, [1.0, 2.0, 3.0, 4.0, 100.0])
    assert (stats.p50, stats.mean, stats.throughput) == (3.0, 22.0, pytest.approx(2000 / 3))
    assert stats.p99 == pytest.approx(np.percentile(stats.times_ms, 99))


def test_peak_memory_is_measured_per_variant():
    r = lepton_opt.benchmark(tiny_mlp(), variants="fp32", threads=1, rounds=2, warmup=1)
    for name in ("ort", "fp32"):
        mem = r.variant(name).memory
        assert mem is not None and mem.peak_mb > 20 and 0 <= mem.added_mb < mem.peak_mb


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"variants": "fp32,fp64"}, OptionError, "unknown variant(s) 'fp64'"),
    ({"batches": [2]}, OptionError, "input 'x' has a fixed batch of 1"),
    ({"labels": np.zeros(1, dtype=np.int64)}, OptionError, "give --data with --labels"),
    ({"data": {"z": np.zeros((2, 16), np.float32), "w": np.zeros((2, 16), np.float32)}}, InputError,
     "no array for input(s) 'x'"),
    ({"data": {"x": np.zeros((2, 15), np.float32)}}, InputError, "'x' samples have shape [15]"),
    ({"data": {"x": np.zeros((2, 16), np.float32)}, "labels": np.zeros(3, dtype=np.int64)}, InputError,
     "needs 2 integer class labels"),
    ({"input_shapes": {"y": [1, 8]}}, OptionError, "not inputs of the model"),
])
def test_bad_options_raise_one_line_errors(kwargs, error, fragment):
    with pytest.raises(error) as info:
        lepton_opt.benchmark(tiny_mlp(), **{**FAST, **kwargs})
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_dynamic_non_batch_dim_needs_an_input_shape():
    model = tiny_mlp()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"
    with pytest.raises(InputError, match=r"input 'x' dim 1 \(features\) is dynamic; fix it with --input-shape x:1x\?"):
        lepton_opt.benchmark(model, **FAST)


def test_labels_need_a_classifier_output():
    """Scores shaped [batch, classes] are a classifier's; a 3-D output is not."""
    onnx_model = onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 1])],
                               [onnx.numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(InputError, match="no classifier output"):
        lepton_opt.benchmark(onnx_model, variants="ort", data={"x": np.zeros((2, 4), np.float32)},
                             labels=np.zeros(2, dtype=np.int64), **FAST)


def test_cli_bench_writes_reports_and_prints_the_table(tmp_path, mlp_path):
    before = mlp_path.read_bytes()
    result = lepton("bench", mlp_path, "--variants", "ort,fp32,int8", "--rounds", "3", "--block", "2", "--no-memory",
                    "--threads", "1", "--report", tmp_path / "rep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "speed-up vs ort" in result.stdout and "int8" in result.stdout and "calibrated on" in result.stdout
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["report.html", "report.json", "report.md"]
    assert mlp_path.read_bytes() == before


@pytest.mark.parametrize("args, fragments", [
    (["--variants", "fp32,turbo"], ["unknown variant(s) 'turbo'"]),
    (["--batch", "1,x"], ["--batch takes comma-separated integers"]),
    (["--batch", "4"], ["fixed batch of 1"]),
    (["--labels", "labels.npy"], ["give --data with --labels"]),
    (["--data", "missing.npz"], ["missing.npz: no such file"]),
    (["--target", "cuda"], []),
])
def test_cli_bench_bad_input(tmp_path, mlp_path, args, fragments):
    result = lepton("bench", mlp_path, "--rounds", "2", "--block", "2", "--no-memory", *args, cwd=tmp_path)
    line = assert_user_error(result, *fragments)
    if "--target" in args:
        assert "cuda" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]


def test_mixed_precision_variants_are_built_and_checked_against_fp32():
    r = lepton_opt.benchmark(resnet_cnn(batch=1), variants="fp32,fp16,bf16,ort-fp16", **FAST)
    assert [v.status for v in r.variants] == ["ok"] * 5
    for name in ("fp16", "ort-fp16"):
        assert r.variant(name).accuracy.cosine >= 0.999, name
    assert r.variant("bf16").accuracy.cosine >= 0.99
    assert r.speedup("fp16", baseline="fp32") > 0


@pytest.mark.parametrize("got, mismatches", [
    ([1.0, np.inf, 3.0], 1),        # infinity where the reference is finite
    ([1.0, 2.0, np.nan], 1),        # NaN where the reference is finite
    ([np.inf, -np.inf, 3.0], 2),
    ([1.0, 2.0, 3.0], 0),
])
def test_compare_fails_on_one_sided_non_finite_values(got, mismatches):
    ref = {"y": np.array([1.0, 2.0, 3.0], np.float32)}
    report = compare(ref, {"y": np.array(got, np.float32)})
    (out,) = report.outputs
    assert out.nonfinite_mismatch == mismatches
    assert report.ok is (mismatches == 0)
    if mismatches:  # the error figures must not look perfect for a broken output
        assert out.max_abs == np.inf and out.cosine == 0.0
        assert f"{mismatches} non-finite" in report.lines()[0] and "FAIL" in report.lines()[0]
    stats = accuracy_stats(ref, {"y": np.array(got, np.float32)}, samples=1)
    assert (stats.max_abs == np.inf) is bool(mismatches)


def test_compare_accepts_matching_non_finite_values():
    ref = np.array([np.inf, -np.inf, np.nan, 1.0], np.float32)
    assert compare({"y": ref}, {"y": ref.copy()}).ok
    assert not compare({"y": ref}, {"y": np.array([-np.inf, np.inf, np.nan, 1.0], np.float32)}).ok
    assert not compare({"y": ref}, {"y": np.array([np.inf, -np.inf, np.inf, 1.0], np.float32)}).ok
