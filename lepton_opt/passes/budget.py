"""The accuracy-budget search the guards share: how many of the most error-adding nodes must
stay in float for a conversion (mixed precision, int8) to meet its budget.

Nodes are ranked by the error their conversion adds; keeping the top 1, 2, 4, ... in float finds
a count that meets the budget, and bisection between the last miss and that count finds the
fewest. Each trial converts the model again and scores it, so the number of trials is what
costs: doubling then bisecting takes about 2 log2(n) of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# metric -> whether a larger score is better
METRICS = {"cosine": True, "max_error": False, "accuracy_drop": False}


def meets(metric: str, budget: float, score: float) -> bool:
    """Whether ``score`` of ``metric`` is within ``budget`` (a NaN score never is)."""
    if score is None or math.isnan(score):
        return False
    return score >= budget if METRICS[metric] else score <= budget


def fewest_kept(count: int, trial: Callable[[int], tuple[T, float]], ok: Callable[[float], bool],
                note: Callable[[str], None] = lambda _msg: None, where: str = "in float",
                max_bisections: int | None = None) -> tuple[int | None, T | Any, float | None]:
    """The smallest ``k`` in 1..``count`` whose ``trial(k)`` (the model with the ``k`` top-ranked
    nodes kept, and its score) is ``ok``, found by doubling then bisecting (at most
    ``max_bisections`` bisection steps: the result then keeps a few more than needed); returns
    ``(k, result, score)``. When even all ``count`` kept misses: ``(None, result, score)`` of
    that last trial (``(None, None, None)`` when there is nothing to keep)."""
    if count < 1:
        return None, None, None
    lo, k = 0, 1
    while True:
        k = min(k, count)
        note(f"keeping the {k} most sensitive node(s) {where}")
        result, score = trial(k)
        if ok(score):
            break
        if k == count:
            return None, result, score
        lo, k = k, k * 2
    best, hi, steps = (k, result, score), k, 0
    while hi - lo > 1 and (max_bisections is None or steps < max_bisections):
        mid = (lo + hi) // 2
        note(f"bisecting: {mid} node(s) {where}")
        result, score = trial(mid)
        steps += 1
        if ok(score):
            best, hi = (mid, result, score), mid
        else:
            lo = mid
    return best
