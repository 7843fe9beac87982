"""Latency of a compiled model against onnxruntime, measured in the same run.

Both engines get the same inputs and thread count. After warm-up they are timed interleaved
(one lepton-opt run, one onnxruntime run, repeated) so that load from other processes and
frequency changes hit both alike; medians are reported, and the ratio is the figure to read.
"""

from __future__ import annotations

import dataclasses
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from lepton_opt.evaluation.accuracy import ort_session

DEFAULT_THREADS = 2


@dataclasses.dataclass
class LatencyComparison:
    """Each engine timed two ways: interleaved with the other, and on its own (back to back);
    the ratio compares each engine's faster figure, so neither gets a warm run the other lacks."""

    lepton_ms: float  # lepton-opt interleaved with onnxruntime (no spinning)
    ort_ms: float  # onnxruntime without spinning, interleaved with lepton-opt
    ort_spinning_ms: float  # onnxruntime with its default spinning, timed on its own
    runs: int
    threads: int
    lepton_alone_ms: float | None = None  # lepton-opt timed on its own

    @property
    def ort_best_ms(self) -> float:
        return min(self.ort_ms, self.ort_spinning_ms)

    @property
    def lepton_best_ms(self) -> float:
        return self.lepton_ms if self.lepton_alone_ms is None else min(self.lepton_ms, self.lepton_alone_ms)

    @property
    def ratio(self) -> float:
        """lepton-opt's faster figure / onnxruntime's faster configuration: below 1 means
        lepton-opt is faster."""
        return self.lepton_best_ms / self.ort_best_ms

    def line(self) -> str:
        return (f"latency (median of {self.runs}, {self.threads} threads): lepton-opt {self.lepton_best_ms:.3f} ms, "
                f"onnxruntime {self.ort_best_ms:.3f} ms, ratio {self.ratio:.2f}x")


def set_runtime_threads(threads: int) -> None:
    """Thread count for lepton-opt's CPU runtime; effective only before TVM's thread pool starts."""
    os.environ["TVM_NUM_THREADS"] = str(threads)


def compare_latency(compiled, model_bytes: bytes, feeds: Mapping[str, np.ndarray], *,
                    threads: int = DEFAULT_THREADS, repeat: int = 50, warmup: int = 5,
                    ort_optimize: bool = True) -> LatencyComparison:
    """Times ``compiled.run`` and an onnxruntime session of ``model_bytes`` interleaved.

    onnxruntime runs with its graph optimizations on (what users deploy), ``threads`` intra-op
    threads. Call :func:`set_runtime_threads` with the same count before TVM starts.

    onnxruntime's worker threads busy-wait after each run by default; timed interleaved, they
    keep the cores from the lepton-opt run that follows (measured: MobileNetV2 4x slower than
    alone). So the interleaved session has spinning off, and a second session with the default
    spinning is timed on its own right after; the ratio is against the faster of the two.
    lepton-opt is likewise timed on its own too (before the spinning session exists), and its
    faster figure is the one compared: timed right after the other engine, a small model starts
    with caches the other engine filled (measured, silero VAD: lepton-opt 0.100 ms interleaved,
    0.055 ms on its own; onnxruntime 0.183 ms interleaved, 0.084 ms on its own with spinning).
    """
    feeds = dict(feeds)
    quiet = ort_session(model_bytes, threads=threads, optimize=ort_optimize, spinning=False)
    ours, theirs = _timed([lambda: compiled.run(feeds), lambda: quiet.run(None, feeds)], repeat, warmup)
    (ours_alone,) = _timed([lambda: compiled.run(feeds)], repeat, warmup)
    spinning = ort_session(model_bytes, threads=threads, optimize=ort_optimize, spinning=True)
    (alone,) = _timed([lambda: spinning.run(None, feeds)], repeat, warmup)
    return LatencyComparison(ours, theirs, alone, repeat, threads, lepton_alone_ms=ours_alone)


def _timed(engines: list[Callable[[], object]], repeat: int, warmup: int) -> list[float]:
    """Median milliseconds of each engine, run round-robin after ``warmup`` untimed rounds."""
    return [statistics.median(t) for t in time_interleaved(engines, repeat, warmup)]


def time_interleaved(engines: Sequence[Callable[[], object]], rounds: int, warmup: int = 0,
                     shuffle_seed: int | None = None, block: int = 1, discard: int = 0) -> list[list[float]]:
    """Milliseconds of every timed run of each engine, run round-robin after ``warmup`` untimed
    rounds.

    Each round runs every engine ``block`` times in a row and keeps the times of all but the
    first ``discard`` of them. With ``shuffle_seed`` the order of engines is shuffled every
    round, so that no engine always runs right after the same other one.
    """
    for _ in range(warmup):
        for run in engines:
            run()
    order = list(range(len(engines)))
    rng = random.Random(shuffle_seed)
    times: list[list[float]] = [[] for _ in engines]
    for _ in range(rounds):
        if shuffle_seed is not None:
            rng.shuffle(order)
        for i in order:
            for j in range(block):
                start = time.perf_counter()
                engines[i]()
                if j >= discard:
                    times[i].append((time.perf_counter() - start) * 1e3)
    return times


@dataclasses.dataclass
class LatencyStats:
    """Per-run times (ms) of one variant at one batch size, and what users read off them."""

    batch: int
    times_ms: list[float]

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.times_ms, q))

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return float(np.mean(self.times_ms))

    @property
    def std(self) -> float:
        return float(np.std(self.times_ms))

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return self.batch * 1e3 / self.p50

    def summary(self) -> dict:
        return {"batch": self.batch, "runs": len(self.times_ms), "p50_ms": self.p50, "p90_ms": self.p90,
                "p99_ms": self.p99, "mean_ms": self.mean, "std_ms": self.std,
                "throughput_per_s": self.throughput}
