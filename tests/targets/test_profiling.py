"""Per-kernel profiles (lepton_opt.profile, targets/profiling.py): every kernel of a run with its
share, the ONNX values it computes, the rule that scheduled it and why it takes its time; on fresh
builds, loaded artifacts and partitioned models."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lepton_opt
from lepton_opt.errors import OptionError
from lepton_opt.targets.profiling import KernelProfile, machine_peak
from tests.models import random_inputs, resnet_cnn
from tests.targets.test_partition import topk_model


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def _check_rows(result: KernelProfile) -> None:
    assert result.rows, "no kernels profiled"
    assert sum(r.share for r in result.rows) == pytest.approx(1.0, abs=1e-6)
    assert [r.seconds for r in result.rows] == sorted((r.seconds for r in result.rows), reverse=True)
    assert all(r.why for r in result.rows), [r.name for r in result.rows if not r.why]
    assert all(r.calls > 0 for r in result.rows)


@pytest.fixture(scope="module")
def cnn():
    return resnet_cnn()


def test_profile_names_rules_values_and_reasons(cnn, tmp_path):
    compiled = lepton_opt.compile(cnn)
    result = lepton_opt.profile(compiled, runs=3)
    _check_rows(result)
    kernels = [r for r in result.rows if r.kind == "kernel"]
    # every kernel the build made carries its facts: a rule, and the ONNX values it computes
    # (batch norms folded into the convolutions: the convolution kernels compute their outputs)
    assert all(r.rule for r in kernels), [r.name for r in kernels if not r.rule]
    outputs = {o for node in cnn.graph.node for o in node.output}
    convs = [r for r in kernels if "conv2d" in r.name]
    assert convs and all(r.values and set(r.values) <= outputs for r in convs), [(r.name, r.values) for r in convs]
    assert all(r.gflops and r.gflops > 0 for r in convs)
    assert any("bound at" in r.why for r in kernels)
    # the document is strict JSON and says what the machine measurably does
    doc = _strict(json.dumps(result.to_json(), allow_nan=False))
    assert doc["peak"]["gflops"] > 0 and doc["peak"]["gbps"] > 0
    assert len(doc["kernels"]) == len(result.rows)

    # a saved artifact, loaded again, profiles with the same facts
    compiled.save(tmp_path / "cnn.lepton")
    loaded = lepton_opt.profile(tmp_path / "cnn.lepton", runs=2)
    _check_rows(loaded)
    assert {r.name: r.rule for r in loaded.rows if r.kind == "kernel"} == \
        {r.name: r.rule for r in kernels}


def test_profile_of_a_partitioned_model_has_its_onnxruntime_segment():
    model = topk_model()
    feeds = random_inputs(model, seed=0)
    feeds["k"] = np.array([5], np.int64)
    result = lepton_opt.profile(model, feeds=feeds, runs=2)
    _check_rows(result)
    segments = [r for r in result.rows if r.kind == "onnxruntime"]
    assert segments and all(r.why.startswith("runs in onnxruntime") for r in segments)


def test_profile_refuses_bad_run_counts(cnn):
    with pytest.raises(OptionError):
        lepton_opt.profile(cnn, runs=0)


def test_machine_peak_is_measured_once():
    assert machine_peak() is machine_peak()
    peak = machine_peak()
    assert peak.cache_gbps >= peak.gbps > 0
