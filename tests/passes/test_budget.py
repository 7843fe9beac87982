"""The accuracy-budget search the precision and quantization guards share (passes/budget.py)."""

from __future__ import annotations

import math

import pytest

from lepton_opt.passes.budget import fewest_kept, meets


def _search(count: int, needed: int | None, **options):
    """A model that meets the budget once ``needed`` nodes are kept (never with None)."""
    tried = []

    def trial(k):
        tried.append(k)
        return f"model keeping {k}", 1.0 if needed is not None and k >= needed else 0.0

    return fewest_kept(count, trial, lambda score: score >= 1.0, **options), tried


@pytest.mark.parametrize("count, needed", [(1, 1), (10, 1), (10, 3), (10, 10), (100, 37), (64, 64)])
def test_the_fewest_nodes_that_meet_the_budget_are_found_in_few_trials(count, needed):
    (k, model, score), tried = _search(count, needed)
    assert k == needed and model == f"model keeping {needed}" and score == 1.0
    assert len(tried) <= 2 * math.ceil(math.log2(count)) + 2, tried


def test_a_budget_not_met_with_everything_kept_returns_that_last_trial():
    (k, model, score), tried = _search(10, None)
    assert k is None and model == "model keeping 10" and score == 0.0 and tried == [1, 2, 4, 8, 10]
    assert fewest_kept(0, lambda k: (k, 1.0), bool) == (None, None, None)


def test_capped_bisection_keeps_a_count_that_meets_the_budget():
    (k, _, score), tried = _search(100, 37, max_bisections=2)
    assert score == 1.0 and 37 <= k <= 64 and len(tried) == 7 + 2


@pytest.mark.parametrize("metric, budget, score, ok", [
    ("cosine", 0.99, 0.995, True), ("cosine", 0.99, 0.98, False), ("max_error", 1e-3, 1e-4, True),
    ("max_error", 1e-3, 1e-2, False), ("accuracy_drop", 0.5, 0.5, True), ("cosine", 0.9, float("nan"), False),
    ("max_error", 1.0, float("nan"), False),
])
def test_meets(metric, budget, score, ok):
    assert meets(metric, budget, score) is ok
