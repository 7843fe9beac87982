"""Per-kernel profiles of compiled models: where a run's time goes, and why.

:func:`profile` runs a compiled model (a fresh build or a loaded artifact, partitioned or not)
with the VM's instrument callback on and reports, per kernel: calls and time per run, its share
of the run, the ONNX values it computes, the schedule rule that made it (or a tuning record),
achieved GFLOP/s and GB/s against what this machine measurably does (a BLAS matmul and a memory
copy, measured once per process) and a "why" line: scalar fallback, untuned, memory- or
compute-bound and how close to the machine, a data-movement kernel. Kernel facts come from the
manifest (``manifest["kernels"]``, recorded at build time by
:func:`lepton_opt.targets.cpu_schedule.kernel_info_pass`); artifacts built before it have none,
and their rows say so.

Timing is wall time between the callbacks around each kernel call: the callbacks add a little to
each call, so compare kernels with each other and the total with a plain run.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

from lepton_opt.errors import ArtifactError

# rules with knobs that `lepton-opt tune` searches (cpu_schedule._TUNABLE)
_TUNABLE_RULES = {"int8", "tiled_reduction"}
_DATA_MOVEMENT = re.compile(r"transpose|layout_transform|reshape|concatenate|split|strided_slice|take|pad|copy|"
                            r"crop_rows|pad_rows|broadcast_to|squeeze|expand_dims|gather")


def profile_interleaved(executables: Sequence[Any], inputs: Sequence, runs: int = 10,
                        warmup: int = 2) -> list[dict[str, tuple[float, float]]]:
    """Per CPU executable (a fresh build's ``Executable`` or a loaded artifact's module): kernel
    name -> (seconds per model run, calls per model run), from ``runs`` runs of each, taken in
    turn (round-robin) so that drifts of the machine touch all alike."""
    vms = [VirtualMachine(ex, tvm.cpu()) for ex in executables]
    for _ in range(warmup):
        for vm in vms:
            vm["main"](*inputs)
    totals: list[dict[str, list[float]]] = [{} for _ in vms]
    start: list[float] = [0.0]
    for vm, table in zip(vms, totals):
        def instrument(func, func_symbol, before_run, ret_value, *args, table=table):  # noqa: ARG001
            now = time.perf_counter()
            if before_run:
                start[0] = now
            else:
                entry = table.setdefault(str(func_symbol), [0.0, 0])
                entry[0] += now - start[0]
                entry[1] += 1
            return 0

        vm.set_instrument(instrument)
    for _ in range(runs):
        for vm in vms:
            vm["main"](*inputs)
    return [{name: (seconds / runs, calls / runs) for name, (seconds, calls) in table.items()} for table in totals]


def profile_kernels(models: Sequence, feeds: Mapping[str, Any], runs: int = 10,
                    warmup: int = 2) -> list[dict[str, tuple[float, float]]]:
    """Per model (CPU builds taking the same ``feeds``): kernel name -> (seconds per model run,
    calls per model run), the models run in turn. Rank kernels by it, and compare the same
    kernel across builds; the callbacks add a little to each."""
    if any(m.target.get("kind") != "llvm" for m in models):
        raise ArtifactError("kernel profiles need CPU builds (target llvm)")
    inputs = [tvm.runtime.tensor(a) for a in models[0]._check_feeds(feeds)]
    return profile_interleaved([m._executable for m in models], inputs, runs, warmup)


# ------------------------------------------------------------------------------ the machine
@dataclasses.dataclass(frozen=True)
class MachinePeak:
    """What this machine measurably does: float32 GFLOP/s of a BLAS matmul (numpy's) and GB/s of
    memory copies (bytes read + written) from main memory and within the caches."""

    gflops: float
    gbps: float  # a 128 MB copy: main memory
    cache_gbps: float  # a 1 MB copy, repeated: what kernels whose arguments stay in cache see

    def bandwidth(self, nbytes: int | None, achieved: float | None = None) -> float:
        """The bandwidth a kernel moving ``nbytes`` (its arguments) at ``achieved`` GB/s can
        expect: the caches' when its arguments fit in the last-level cache (or it already moves
        them faster than main memory could), else main memory's."""
        cached = (nbytes is not None and nbytes <= _last_level_cache()) or (achieved or 0) > self.gbps
        return self.cache_gbps if cached else self.gbps


@functools.lru_cache(maxsize=1)
def _last_level_cache() -> int:
    """Bytes of the largest CPU cache (Linux sysfs; 4 MB where it cannot be read)."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
            sizes.append(int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1:], 0))
        except (OSError, ValueError):
            continue
    return max(sizes, default=4 << 20)


@functools.lru_cache(maxsize=1)
def machine_peak() -> MachinePeak:
    """Measured once per process (about half a second)."""
    size = 1024
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    a @ a  # noqa: B018 - warm-up (BLAS threads start)
    best = min(_timed(lambda: a @ a) for _ in range(5))
    rates = []
    for elements, repeat in ((32 << 20, 1), (1 << 18, 64)):
        src = np.ones(elements, np.float32)
        dst = np.empty_like(src)

        def copies(src=src, dst=dst, repeat=repeat):
            for _ in range(repeat):
                np.copyto(dst, src)

        copies()
        rates.append(2 * src.nbytes * repeat / min(_timed(copies) for _ in range(3)) / 1e9)
    return MachinePeak(gflops=2 * size ** 3 / best / 1e9, gbps=rates[0], cache_gbps=max(rates))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------ the profile
@dataclasses.dataclass
class KernelRow:
    name: str
    calls: float  # per run
    seconds: float  # per run
    share: float  # of the run's kernel time, 0..1
    kind: str  # "kernel", "builtin" (a VM builtin: allocation, copies) or "onnxruntime" (a segment)
    rule: str | None = None
    values: list[str] = dataclasses.field(default_factory=list)
    gflops: float | None = None  # achieved
    gbps: float | None = None  # achieved, counting each argument once
    why: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class KernelProfile:
    rows: list[KernelRow]
    seconds: float  # per run, all rows together
    runs: int
    peak: MachinePeak
    threads: int

    def to_json(self) -> dict:
        return {"seconds_per_run": self.seconds, "runs": self.runs, "threads": self.threads,
                "peak": {"gflops": self.peak.gflops, "gbps": self.peak.gbps, "cache_gbps": self.peak.cache_gbps,
                         "measured_with": "numpy float32 matmul 1024^3; 128 MB and 1 MB copies"},
                "kernels": [r.to_json() for r in self.rows]}


def profile(model, feeds: Mapping[str, Any], runs: int = 10, warmup: int = 2) -> KernelProfile:
    """Profile ``model`` (a CPU :class:`CompiledModel` or :class:`PartitionedModel`, fresh or
    loaded) on ``feeds``: one row per kernel (and per onnxruntime segment), slowest first."""
    from lepton_opt.targets.artifact import CompiledModel, PartitionedModel, runtime_threads

    if model.target.get("kind") != "llvm":
        raise ArtifactError("kernel profiles run the model here: profile a CPU build (--target llvm)")
    times: dict[str, list] = {}  # name -> [seconds, calls, kind, kernel facts]
    if isinstance(model, PartitionedModel):
        env = dict(feeds)
        for index, (seg, part) in enumerate(zip(model.manifest["segments"], model.parts)):
            args = {name: env[name] for name in seg["inputs"]}
            if isinstance(part, CompiledModel):
                env.update(part.run(args))
                _add(times, profile_kernels([part], args, runs, warmup)[0], part.manifest.get("kernels"))
            else:
                session = model._session(index)
                for _ in range(warmup):
                    outputs = session.run(seg["outputs"], args)
                start = time.perf_counter()
                for _ in range(runs):
                    outputs = session.run(seg["outputs"], args)
                times[f"onnxruntime segment {index}"] = [(time.perf_counter() - start) / runs, 1.0, "onnxruntime",
                                                         {"values": list(seg["outputs"])}]
                env.update(zip(seg["outputs"], outputs))
    else:
        _add(times, profile_kernels([model], feeds, runs, warmup)[0], model.manifest.get("kernels"))
    total = sum(t[0] for t in times.values()) or 1e-12
    peak = machine_peak()
    rows = []
    for name, (seconds, calls, kind, facts) in sorted(times.items(), key=lambda kv: -kv[1][0]):
        row = KernelRow(name=name, calls=calls, seconds=seconds, share=seconds / total, kind=kind,
                        rule=(facts or {}).get("rule"), values=list((facts or {}).get("values") or []))
        flops, nbytes = (facts or {}).get("flops"), (facts or {}).get("bytes")
        if seconds > 0 and calls:
            per_call = seconds / calls
            row.gflops = flops / per_call / 1e9 if flops else None
            row.gbps = nbytes / per_call / 1e9 if nbytes else None
        row.why = _why(row, facts, flops, nbytes, peak, model.manifest)
        rows.append(row)
    return KernelProfile(rows=rows, seconds=total, runs=runs, peak=peak, threads=runtime_threads())


def _add(times: dict, profiled: dict[str, tuple[float, float]], kernels: dict | None) -> None:
    for name, (seconds, calls) in profiled.items():
        facts = (kernels or {}).get(name)
        kind = "builtin" if name.startswith("vm.builtin") or (facts is None and "." in name) else "kernel"
        entry = times.setdefault(name, [0.0, 0.0, kind, facts])
        entry[0] += seconds
        entry[1] += calls


def _why(row: KernelRow, facts: dict | None, flops, nbytes, peak: MachinePeak, manifest: dict) -> str:
    if row.kind == "onnxruntime":
        summary = (manifest.get("fallback") or {}).get("summary") or "nodes without a lowering"
        return f"runs in onnxruntime: {summary}"
    if row.kind == "builtin":
        return "VM builtin: memory allocation, copies, shape checks"
    if facts is None:
        return "no kernel facts (artifact built before lepton-opt recorded them: recompile)"
    notes = []
    if row.rule in (None, "none"):
        notes.append("scalar fallback: no schedule rule matched")
    elif row.rule == "tuned":
        notes.append("schedule from a tuning record")
    intensity = flops / nbytes if flops and nbytes else None
    bandwidth = peak.bandwidth(nbytes, row.gbps)
    if not flops and _DATA_MOVEMENT.search(row.name):
        notes.append("data movement (layout or copy) between kernels")
    if row.gbps is not None and (intensity is None or intensity < peak.gflops / bandwidth):
        where = "in-cache" if bandwidth == peak.cache_gbps else "main-memory"
        notes.append(f"memory-bound at {100 * row.gbps / bandwidth:.0f}% of measured {where} bandwidth")
    elif row.gflops is not None:
        achieved = row.gflops / peak.gflops
        notes.append(f"compute-bound at {100 * achieved:.0f}% of measured peak")
        if row.rule in _TUNABLE_RULES and achieved < 0.5:
            notes.append("untuned: `lepton-opt tune` may find a faster tile")
    if "softmax" in row.name and "attention" not in row.name:
        notes.append("runs unfused: Softmax in a kernel of its own (attention not fused)")
    if nbytes is None and row.kind == "kernel":
        notes.append("shapes known at run time only: no FLOP or byte counts")
    if (facts or {}).get("note"):
        notes.append(facts["note"])
    if not notes and row.rule:
        notes.append(f"{row.rule} schedule")
    return "; ".join(notes)

