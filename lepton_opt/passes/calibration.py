"""Calibration inputs and scoring against the float32 original, shared by the passes that trade
accuracy for speed under a budget (pruning's sensitivity scan, the precision guard).

:class:`Evaluator` holds the calibration batches (``data`` with optional ``labels``, or seeded
inputs) and onnxruntime's outputs of the reference model on them; it scores candidate models
(largest output error over the largest reference value, smallest cosine, top-1 accuracy drop)
and can run a model with intermediate values exposed, one batch at a time, so per-value
statistics never hold every activation of every sample in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import onnx
import onnx_ir as ir

from lepton_opt.evaluation.accuracy import (AccuracyStats, accuracy_stats, classifier_output, nonfinite_mismatch,
                                       ort_session, task_accuracy)
from lepton_opt.evaluation.data import accuracy_inputs, input_specs, resolve_batches, stack_outputs
from lepton_opt.errors import InputError, OptionError


class Evaluator:
    """Runs candidate models in onnxruntime on the calibration inputs and scores them against
    ``base`` (an ``onnx.ModelProto`` with static shapes but for the batch)."""

    def __init__(self, base: onnx.ModelProto, data, labels, samples: int, seed: int, source: str,
                 accuracy: bool = False):
        model = ir.serde.deserialize_model(base)
        inputs = input_specs(model, None, source)
        batch = resolve_batches(inputs, None, source)[0]
        if accuracy and labels is None:
            raise OptionError("--max-accuracy-drop needs labelled data: give --data and --labels")
        self.batches = accuracy_inputs(inputs, batch, data, labels, samples, seed, source)
        self.seeded = data is None
        self.batch, self.accuracy, self.count = batch, accuracy, 0
        self.base = base
        self.reference = self.outputs(base)
        if accuracy:
            self.scores_name = classifier_output(self.reference)
            if self.scores_name is None:
                raise InputError(f"{source}: --max-accuracy-drop needs a classifier output ([batch, classes] scores)")
            self.base_accuracy = self._accuracy(self.reference)

    @property
    def description(self) -> str:
        return self.batches.description

    def outputs(self, proto: onnx.ModelProto) -> dict[str, np.ndarray]:
        session = ort_session(proto, optimize=True)
        names = [o.name for o in session.get_outputs()]
        runs = [dict(zip(names, session.run(names, feed))) for feed in self.batches.feeds]
        return stack_outputs(runs, self.batches.valid, self.batch)

    def _accuracy(self, outputs) -> float:
        return 100.0 * task_accuracy(outputs[self.scores_name], self.batches.labels)

    def stats(self, proto: onnx.ModelProto) -> AccuracyStats:
        """``proto``'s outputs against the reference's."""
        self.count += 1
        return accuracy_stats(self.reference, self.outputs(proto), self.batches.samples, self.batches.labels)

    def __call__(self, proto: onnx.ModelProto) -> float:
        """The pruning scan's metric of ``proto``: accuracy drop in points, or the largest relative
        output error. Lower is better."""
        self.count += 1
        got = self.outputs(proto)
        if self.accuracy:
            return self.base_accuracy - self._accuracy(got)
        return accuracy_stats(self.reference, got, self.batches.samples).max_rel

    def intermediates(self, proto: onnx.ModelProto, names: Iterable[str]) -> Iterator[dict[str, np.ndarray]]:
        """``proto`` run on each calibration batch with the float values ``names`` exposed as
        outputs; yields one ``{name: array}`` per batch (padded rows dropped)."""
        exposed = with_outputs(proto, names)
        session = ort_session(exposed, optimize=False)
        wanted = [o.name for o in session.get_outputs()]
        for feed, valid in zip(self.batches.feeds, self.batches.valid):
            arrays = dict(zip(wanted, session.run(wanted, feed)))
            yield {k: (a[:valid] if a.ndim and a.shape[0] == self.batch else a) for k, a in arrays.items()}


def with_outputs(proto: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``proto`` whose graph also outputs the float32 values ``names``."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    present = {o.name for o in exposed.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return exposed


def value_peaks(evaluator: Evaluator, proto: onnx.ModelProto, names: Iterable[str]) -> dict[str, float]:
    """Largest finite magnitude of each named value of ``proto`` over the calibration inputs."""
    peaks: dict[str, float] = {}
    for arrays in evaluator.intermediates(proto, names):
        for name, a in arrays.items():
            finite = np.abs(a[np.isfinite(a)]) if a.dtype.kind == "f" else np.abs(a)
            peaks[name] = max(peaks.get(name, 0.0), float(finite.max(initial=0.0)))
    return peaks


def value_errors(evaluator: Evaluator, reference: onnx.ModelProto, candidate: onnx.ModelProto,
                 names: Iterable[str]) -> dict[str, float]:
    """Per named value, the largest error of ``candidate`` against ``reference`` over the largest
    reference magnitude, over the calibration inputs (infinite where one side is not finite)."""
    names = list(dict.fromkeys(names))
    diff: dict[str, float] = dict.fromkeys(names, 0.0)
    peak: dict[str, float] = dict.fromkeys(names, 0.0)
    for ref, got in zip(evaluator.intermediates(reference, names), evaluator.intermediates(candidate, names)):
        for name in names:
            if name not in ref or name not in got:
                continue
            r, g = ref[name].astype(np.float64), got[name].astype(np.float64)
            if r.shape != g.shape:
                diff[name] = float("inf")
                continue
            if nonfinite_mismatch(r, g):
                diff[name] = float("inf")
            both = np.isfinite(r) & np.isfinite(g)
            if both.any():
                diff[name] = max(diff[name], float(np.abs(r[both] - g[both]).max()))
                peak[name] = max(peak[name], float(np.abs(r[both]).max()))
    return {n: (diff[n] / peak[n] if peak[n] > 0 else (0.0 if diff[n] == 0 else float("inf"))) for n in names}

