"""Default CPU schedules: every kernel of a real model gets a rule, and the result is parallel
and vectorized; numerics are checked against onnxruntime by the op and end-to-end tests."""

from __future__ import annotations

import collections

import pytest
import tvm
from tvm import tirx

import lepton_opt
from lepton_opt.targets import cpu_schedule
from lepton_opt.targets.build import resolve_target
from lepton_opt.targets.compile import lower_model
from tests.models import mobilenet_block_cnn, resnet_cnn, transformer_layer


def _legalized(model):
    target = resolve_target("llvm").tvm_target()
    with target:
        mod = tvm.transform.Sequential(cpu_schedule._pre_schedule_passes(target))(
            lower_model(lepton_opt.load(model)).mod)
    return mod, target


@pytest.mark.parametrize("make", [resnet_cnn, mobilenet_block_cnn, transformer_layer])
def test_every_kernel_gets_a_schedule(make):
    mod, target = _legalized(make())
    rules = collections.Counter()
    for _, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        scheduled, rule = cpu_schedule.schedule_prim_func(func, target)
        rules[rule] += 1
        assert rule != "none", func
        text = scheduled.script()
        assert "T.parallel" in text or "T.vectorized" in text, text
    # Convolutions and matmuls take the register-tiled rule, not the generic fallback.
    assert rules["tiled_reduction"] >= 6, rules


def test_convolutions_are_converted_to_nhwc():
    target = resolve_target("llvm").tvm_target()
    mod = lower_model(lepton_opt.load(resnet_cnn())).mod
    with target:
        converted = tvm.transform.Sequential(cpu_schedule.cpu_graph_passes(target))(mod)
    text = converted["main"].script()
    convs = text.count("R.nn.conv2d(")
    assert convs == 6
    assert text.count('data_layout="NHWC"') == convs and text.count('kernel_layout="HWIO"') == convs
