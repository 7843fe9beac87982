"""Model inputs for benchmarks and calibration: shapes per batch size, seeded inputs, user datasets.

A dataset is an ``.npz`` file (or a dict) with one array per model input, samples stacked on
axis 0; it is fed in batches of the model's batch size, the last batch padded with copies of
its last sample (:func:`stack_outputs` drops the padded rows again). Labels are one integer
class per sample (``.npy``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from lepton_opt.evaluation.accuracy import random_feeds
from lepton_opt.errors import InputError, OptionError
from lepton_opt.ir.load import InputShapes


@dataclasses.dataclass
class ModelInput:
    name: str
    dtype: str
    shape: list[int | str | None]


def input_specs(model: ir.Model, input_shapes: InputShapes | None, source: str) -> list[ModelInput]:
    given = dict(input_shapes or {})
    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    unknown = sorted(set(given) - {v.name for v in inputs})
    if unknown:
        raise OptionError(f"{source}: --input-shape names {', '.join(map(repr, unknown))}, not inputs of the model "
                          f"(inputs: {', '.join(v.name for v in inputs)})")
    specs = []
    for v in inputs:
        dtype = np.dtype(v.dtype.numpy()).name if v.dtype is not None else "float32"
        if v.name in given:
            shape: list = [int(d) for d in given[v.name]]
        elif v.shape is None:
            raise InputError(f"{source}: input {v.name!r} has no shape; give it with --input-shape {v.name}:DIMS")
        else:
            shape = [d if isinstance(d, int) else (d.value if d.value is not None else None) for d in v.shape]
        specs.append(ModelInput(v.name, dtype, shape))
    return specs


def resolve_batches(inputs: list[ModelInput], batches: Sequence[int] | None, source: str) -> list[int]:
    """The batch sizes to measure; every input's non-batch dims must be fixed."""
    for spec in inputs:
        for axis, dim in enumerate(spec.shape[1:], start=1):
            if not isinstance(dim, int):
                raise InputError(f"{source}: input {spec.name!r} dim {axis} ({dim or '?'}) is dynamic; fix it with "
                                 f"--input-shape {spec.name}:{'x'.join(str(d) if isinstance(d, int) else '?' for d in spec.shape)} "
                                 "(replace each ? by a size)")
    batched = [s for s in inputs if s.shape]
    if not batches:
        fixed = [s.shape[0] for s in batched if isinstance(s.shape[0], int)]
        return [fixed[0] if fixed else 1]
    batches = list(dict.fromkeys(int(b) for b in batches))
    if any(b < 1 for b in batches):
        raise OptionError(f"batch sizes must be at least 1, got {batches}")
    for spec in batched:
        fixed = spec.shape[0]
        wrong = [b for b in batches if isinstance(fixed, int) and b != fixed]
        if wrong:
            raise OptionError(f"{source}: input {spec.name!r} has a fixed batch of {fixed}, so batch {wrong[0]} cannot "
                              "run; benchmark a model exported with a dynamic first dim, or drop --batch")
    return batches


def shapes_at(inputs: list[ModelInput], batch: int) -> dict[str, list[int]]:
    return {s.name: ([batch] + [int(d) for d in s.shape[1:]]) if s.shape else [] for s in inputs}


def feed_specs(inputs: list[ModelInput], batch: int) -> list[dict]:
    shapes = shapes_at(inputs, batch)
    return [{"name": s.name, "dtype": s.dtype, "shape": shapes[s.name]} for s in inputs]


@dataclasses.dataclass
class Batches:
    """Inputs in full batches; ``valid[i]`` rows of ``feeds[i]`` are samples, the rest padding."""

    feeds: list[dict[str, np.ndarray]]
    valid: list[int]
    labels: np.ndarray | None
    description: str

    @property
    def samples(self) -> int:
        return sum(self.valid)


def accuracy_inputs(inputs: list[ModelInput], batch: int, data, labels, samples: int, seed: int,
                    source: str) -> Batches:
    """``data`` (with ``labels``) in batches of ``batch``, or ``samples`` seeded batches."""
    if data is None:
        if labels is not None:
            raise OptionError("labels need the inputs they belong to: give --data with --labels")
        feeds = [random_feeds(feed_specs(inputs, batch), seed + i) for i in range(samples)]
        return Batches(feeds, [batch] * samples, None, f"{samples} seeded random inputs (seed {seed})")
    arrays, name = load_data(data, inputs)
    count = {len(a) for a in arrays.values()}
    if len(count) != 1:
        raise InputError(f"{name}: arrays hold different numbers of samples ({sorted(count)}); axis 0 is the sample axis")
    (n,) = count
    if n == 0:
        raise InputError(f"{name}: holds no samples")
    for spec in inputs:
        want = tuple(int(d) for d in spec.shape[1:])
        got = arrays[spec.name].shape[1:]
        if got != want:
            raise InputError(f"{name}: {spec.name!r} samples have shape {list(got)}, the model takes {list(want)} "
                             "per sample (array shape must be [samples, ...] matching the input after its batch dim)")
    feeds, valid = [], []
    for start in range(0, n, batch):
        rows = min(batch, n - start)
        feed = {}
        for spec in inputs:
            chunk = arrays[spec.name][start:start + rows].astype(spec.dtype, copy=False)
            if rows < batch:  # pad the last batch with copies of its last sample; padded rows are dropped
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - rows, axis=0)])
            feed[spec.name] = np.ascontiguousarray(chunk)
        feeds.append(feed)
        valid.append(rows)
    label_array = None
    if labels is not None:
        label_array = load_labels(labels, n)
    return Batches(feeds, valid, label_array, f"{name} ({n} samples{', labelled' if label_array is not None else ''})")


def load_data(data, inputs) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(data, Mapping):
        arrays, name = {k: np.asarray(v) for k, v in data.items()}, "data"
    else:
        name = str(data)
        try:
            with np.load(data, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except Exception as e:
            raise InputError(f"{name}: not a readable .npz file ({type(e).__name__}); save inputs with "
                             "numpy.savez(path, input_name=array, ...)") from None
    names = [s.name for s in inputs]
    if len(names) == 1 and names[0] not in arrays and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"{name}: has no array for input(s) {', '.join(map(repr, missing))} "
                         f"(arrays: {', '.join(arrays) or 'none'}); name each array after a model input")
    return {n: arrays[n] for n in names}, name


def load_labels(labels, n: int) -> np.ndarray:
    name = "labels" if isinstance(labels, np.ndarray) else str(labels)
    if isinstance(labels, np.ndarray):
        array = labels
    else:
        try:
            array = np.load(labels, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except Exception as e:
            raise InputError(f"{name}: not a readable .npy file ({type(e).__name__})") from None
    array = np.asarray(array).reshape(-1) if np.ndim(array) else np.asarray(array)
    if array.ndim != 1 or len(array) != n or array.dtype.kind not in "iu":
        raise InputError(f"{name}: needs {n} integer class labels (one per sample), got shape {list(np.shape(array))} "
                         f"of {array.dtype}")
    return array


def stack_outputs(runs: list[dict[str, np.ndarray]], valid: list[int], batch: int) -> dict[str, np.ndarray]:
    """Each output's samples along axis 0, without the rows that pad the last batch."""
    stacked = {}
    for name in runs[0]:
        parts = []
        for run, rows in zip(runs, valid):
            value = np.asarray(run[name])
            if value.ndim >= 1 and value.shape[0] == batch:
                parts.append(value[:rows])
            else:
                parts.append(value[None])
        stacked[name] = np.concatenate(parts)
    return stacked
