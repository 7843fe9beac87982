"""lepton_opt.auto / `lepton-opt auto`: the search over builds within an accuracy budget. Small
models, no timing assertions: which candidates are tried, skipped and rejected, that the held-out
split is never calibrated on, that the choice meets the budget on it, and what the output holds."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import lepton_opt
from lepton_opt.searching import Budget, _recipes, split_data
from lepton_opt.evaluation.data import input_specs
from lepton_opt.errors import OptionError
from lepton_opt.ir.load import load_model
from tests.models import ort_run, resnet_cnn, tiny_mlp


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_the_held_out_half_is_never_calibrated_on():
    model = resnet_cnn()
    inputs = input_specs(load_model(model).model, None, "cnn")
    data = {"input": np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 32, 32), np.float32)}
    split = split_data(inputs, 1, data, None, None, None, 0, "cnn")
    calibrated = {float(v) for v in split.calibration["input"][:, 0, 0, 0]}
    judged = {float(f["input"][0, 0, 0, 0]) for f in split.evaluation.feeds}
    assert calibrated == {0, 1, 2, 3, 4} and judged == {5, 6, 7, 8, 9}
    assert "held out" in split.description


def test_candidates_that_cannot_help_are_skipped_with_the_reason():
    recipes = {c.name: skip for c, skip in _recipes({"Conv", "Relu", "GlobalAveragePool"}, {"avx512f"})}
    assert recipes["fp32"] is None and recipes["int8-minmax"] is None and recipes["pruned"] is None
    assert "no MatMul or Gemm" in recipes["int8-dynamic"] and "no MatMul or Gemm" in recipes["int8-weight-only"]
    assert "no native fp16" in recipes["fp16"] and "no native bf16" in recipes["bf16"]
    with_amx = {c.name: skip for c, skip in _recipes({"MatMul"}, {"avx512fp16", "amx-bf16"})}
    assert with_amx["fp16"] is None and with_amx["bf16"] is None and with_amx["int8-dynamic"] is None


@pytest.mark.parametrize("options, message", [
    ({"max_accuracy_drop": -1}, "0 to 100"),
    ({"min_cosine": 1.5}, "(-1, 1]"),
    ({"max_error": -0.1}, "at least 0"),
    ({"min_cosine": 0.9, "max_error": 0.1}, "exactly one"),
    ({}, "exactly one"),
])
def test_impossible_or_ambiguous_budgets_are_one_line_errors(options, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace("]", r"\]")):
        Budget(**options)


def test_accuracy_drop_needs_labels():
    with pytest.raises(OptionError, match="labelled data"):
        lepton_opt.auto(tiny_mlp(), max_accuracy_drop=1.0, budget="1m")


def test_a_budget_only_fp32_meets_returns_fp32_with_the_evidence(tmp_path):
    # 1e-6 of the largest output: float32 rounding differences pass, every conversion misses
    result = lepton_opt.auto(tiny_mlp(), max_error=1e-6, budget="2m", output_dir=tmp_path / "out")
    by_name = {c.name: c for c in result.candidates}
    assert result.chosen.name == "fp32" and "no other candidate met the budget" in result.why
    assert by_name["fp32"].status == "measured" and by_name["fp32"].score <= 1e-6
    for name in ("int8-dynamic", "int8-minmax"):
        assert by_name[name].status == "rejected" and "misses the budget" in by_name[name].reason
        assert by_name[name].score > 1e-6
    assert by_name["fp32-tuned"].status == "skipped" and "time budget" in by_name["fp32-tuned"].reason
    assert by_name["int8-tuned"].status == "skipped"
    assert result.chosen.replay.startswith("lepton-opt compile MODEL.onnx")


def test_search_on_a_cnn_chooses_a_build_within_the_budget_and_writes_it(tmp_path):
    model = resnet_cnn()
    rng = np.random.default_rng(0)
    data = {"input": rng.standard_normal((8, 3, 32, 32)).astype(np.float32)}
    out = tmp_path / "auto"
    result = lepton_opt.auto(model, data=data, min_cosine=0.99, budget="3m", output_dir=out)
    names = [c.name for c in result.candidates]
    assert names[0] == "fp32" and {"int8-minmax", "int8-entropy", "pruned", "pruned+int8"} <= set(names)
    assert all(c.status in ("skipped", "failed", "rejected", "slow", "measured") for c in result.candidates)
    chosen = result.chosen
    assert chosen.chosen and chosen.status == "measured" and chosen.score >= 0.99 and not chosen.nonfinite
    assert [c.name for c in result.candidates if c.chosen] == [chosen.name]
    assert "4-7 are held out" in result.data
    # measured candidates carry both ratios; the Pareto front is not empty
    assert all(c.vs_onnxruntime and c.vs_fp32 for c in result.candidates if c.status == "measured")
    assert any(c.pareto for c in result.candidates)
    # the folder: artifact with the recipe, its ONNX model, the calibration half, three reports
    assert {p.name for p in out.iterdir()} >= {"model.lepton", "model.onnx", "calibration.npz", "report.md",
                                               "report.html", "report.json"}
    artifact = lepton_opt.load_compiled(out / "model.lepton")
    assert artifact.manifest["auto"]["candidate"] == chosen.name and artifact.manifest["auto"]["replay"]
    with np.load(out / "calibration.npz") as cal:
        np.testing.assert_array_equal(cal["input"], data["input"][:4])
    report = _strict((out / "report.json").read_text())
    assert report["chosen"] == chosen.name and len(report["candidates"]) == len(result.candidates)
    assert "<svg" in (out / "report.html").read_text() and chosen.name in (out / "report.md").read_text()
    # the artifact computes what its ONNX model computes (onnxruntime)
    feeds = {"input": data["input"][4:5]}
    expected = ort_run(onnx.load(out / "model.onnx"), feeds)["logits"]
    got = artifact.run(feeds)["logits"]
    np.testing.assert_allclose(got, expected, atol=5e-2 if "int8" in chosen.name else 1e-4, rtol=1e-2)
