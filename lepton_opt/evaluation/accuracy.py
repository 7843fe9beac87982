"""Accuracy of a compiled model against onnxruntime on the same inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx


@dataclasses.dataclass
class OutputError:
    name: str
    max_abs: float
    max_rel: float
    cosine: float
    ok: bool
    nonfinite_mismatch: int = 0  # elements non-finite on one side only (or infinities of other sign)


@dataclasses.dataclass
class VerifyReport:
    outputs: list[OutputError]
    atol: float
    rtol: float
    dims: dict = dataclasses.field(default_factory=dict)  # symbolic dim -> the size the seeded inputs took

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def lines(self) -> list[str]:
        return [f"{o.name}: max abs error {o.max_abs:.3g}, max rel error {o.max_rel:.3g}, "
                f"cosine {o.cosine:.6f}"
                + (f", {o.nonfinite_mismatch} non-finite where the reference is not (or the reverse)"
                   if o.nonfinite_mismatch else "")
                + f" {'OK' if o.ok else 'FAIL'}" for o in self.outputs]


def ort_session(model: onnx.ModelProto | bytes | str, threads: int = 0, optimize: bool = False,
                spinning: bool = True):
    """An onnxruntime CPU session; ``spinning=False`` stops its idle worker threads from
    busy-waiting after each run (they would take the cores from whatever runs next)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()  # str: a file path
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def random_feeds(inputs: Sequence[Mapping], seed: int = 0,
                 dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs for ``inputs`` (manifest-style specs); symbolic dims from ``dims``, else 1.

    Floats are standard normal; integers are 0/1 (valid token ids and attention masks alike).
    """
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    feeds = {}
    for spec in inputs:
        shape = [d if isinstance(d, int) else dims.get(d, 1) for d in spec["shape"]]
        if spec["dtype"] == "bfloat16":  # what CompiledModel.run takes for a bfloat16 input
            import ml_dtypes

            feeds[spec["name"]] = rng.standard_normal(shape).astype(ml_dtypes.bfloat16)
            continue
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "f":
            feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec["name"]] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[spec["name"]] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


def nonfinite_mismatch(r: np.ndarray, o: np.ndarray) -> int:
    """Elements where exactly one of ``r`` and ``o`` is non-finite, or both are but differ
    (NaN against an infinity, +inf against -inf). Both NaN, or equal infinities, agree."""
    r, o = np.asarray(r, dtype=np.float64), np.asarray(o, dtype=np.float64)
    finite_r, finite_o = np.isfinite(r), np.isfinite(o)
    agree = (finite_r & finite_o) | (np.isnan(r) & np.isnan(o)) | (np.isinf(r) & (r == o))
    return int(np.count_nonzero(~agree))


def _finite_errors(r: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, int]:
    """Over the elements finite in both float64 arrays: the mask, |r - o|, its max and the cosine;
    and the count of elements non-finite on one side only (see ``nonfinite_mismatch``).

    When that count is not zero the max error is infinite and the cosine is 0: the numbers over
    the finite part alone would look perfect for an output full of overflowed values."""
    finite = np.isfinite(r) & np.isfinite(o)
    diff = np.abs(r[finite] - o[finite])
    max_abs = float(diff.max(initial=0.0))
    denom = float(np.linalg.norm(r[finite]) * np.linalg.norm(o[finite]))
    cosine = float(np.dot(r[finite], o[finite]) / denom) if denom > 0 else float(max_abs == 0.0)
    mismatch = nonfinite_mismatch(r, o)
    if mismatch:
        max_abs, cosine = float("inf"), 0.0
    return finite, diff, max_abs, cosine, mismatch


def compare(reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
            atol: float = 1e-4, rtol: float = 1e-4) -> VerifyReport:
    errors = []
    for name, ref in reference.items():
        out = np.asarray(got[name])
        ref = np.asarray(ref)
        if out.shape != ref.shape:
            errors.append(OutputError(name, float("inf"), float("inf"), 0.0, False))
            continue
        r, o = ref.astype(np.float64), out.astype(np.float64)
        finite, diff, max_abs, cosine, mismatch = _finite_errors(r, o)
        max_rel = float("inf") if mismatch else float((diff / np.maximum(np.abs(r[finite]), 1e-12)).max(initial=0.0))
        ok = not mismatch and bool(np.allclose(o[finite], r[finite], atol=atol, rtol=rtol))
        errors.append(OutputError(name, max_abs, max_rel, cosine, ok, mismatch))
    return VerifyReport(errors, atol, rtol)


def merge_reports(reports: Sequence[VerifyReport]) -> VerifyReport:
    """One report over several runs (batches of a dataset): per output the worst error and
    cosine, the non-finite mismatches summed, OK only if every run was."""
    first = reports[0]
    merged = []
    for i, out in enumerate(first.outputs):
        runs = [r.outputs[i] for r in reports]
        merged.append(OutputError(out.name, max(o.max_abs for o in runs), max(o.max_rel for o in runs),
                                  min(o.cosine for o in runs), all(o.ok for o in runs),
                                  sum(o.nonfinite_mismatch for o in runs)))
    return VerifyReport(merged, first.atol, first.rtol, first.dims)


@dataclasses.dataclass
class OutputAccuracy:
    """One output of a variant against the reference, over every evaluated sample.

    ``max_rel`` is the largest absolute error divided by the largest reference magnitude (an
    element-wise ratio is dominated by near-zero references and says little)."""

    name: str
    max_abs: float
    max_rel: float
    cosine: float


@dataclasses.dataclass
class AccuracyStats:
    """A variant's outputs against onnxruntime fp32 on ``samples`` inputs.

    For a classifier output (the first float output shaped [batch, classes]): ``top1`` is the
    share of rows whose arg-max equals the reference's, ``top5`` the share whose reference
    arg-max is among the variant's five highest scores. ``task_accuracy`` is the share of rows
    whose arg-max equals the given label."""

    samples: int
    outputs: list[OutputAccuracy]
    classifier_output: str | None = None
    top1: float | None = None
    top5: float | None = None
    task_accuracy: float | None = None

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)


def classifier_output(outputs: Mapping[str, np.ndarray]) -> str | None:
    """Name of the first float output shaped [batch, classes] with at least two classes."""
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.ndim == 2 and value.shape[1] >= 2 and value.dtype.kind == "f":
            return name
    return None


def accuracy_stats(reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], samples: int,
                   labels: np.ndarray | None = None) -> AccuracyStats:
    """Compare ``got`` with ``reference`` (each output's ``samples`` stacked along axis 0)."""
    rows = []
    for name, ref in reference.items():
        r = np.asarray(ref, dtype=np.float64).ravel()
        o = np.asarray(got[name], dtype=np.float64).ravel()
        if r.shape != o.shape:
            rows.append(OutputAccuracy(name, float("inf"), float("inf"), 0.0))
            continue
        finite, _, max_abs, cosine, _ = _finite_errors(r, o)
        scale = float(np.abs(r[finite]).max(initial=0.0))
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        rows.append(OutputAccuracy(name, max_abs, max_rel, cosine))
    stats = AccuracyStats(samples=samples, outputs=rows)
    name = classifier_output(reference)
    if name is not None and np.asarray(got[name]).shape == np.asarray(reference[name]).shape:
        ref_scores, scores = np.asarray(reference[name]), np.asarray(got[name])
        ref_top = ref_scores.argmax(axis=1)
        stats.classifier_output = name
        stats.top1 = float((scores.argmax(axis=1) == ref_top).mean())
        if scores.shape[1] > 5:
            top5 = np.argsort(-scores, axis=1)[:, :5]
            stats.top5 = float((top5 == ref_top[:, None]).any(axis=1).mean())
        if labels is not None:
            stats.task_accuracy = task_accuracy(scores, labels)
    return stats


def task_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows of ``scores`` whose arg-max equals the label."""
    labels = np.asarray(labels).reshape(-1)
    return float((np.asarray(scores).argmax(axis=1) == labels).mean())
