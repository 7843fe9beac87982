"""The variants ``lepton-opt bench`` measures, and how each one is built.

A variant is one way of running the user's model: onnxruntime on the model as given (the
baseline every ratio is taken against), onnxruntime on lepton-opt's optimized ``.onnx``, or a
lepton-opt build, in fp32, mixed precision (fp16, bf16), int8 or pruned. A variant a build cannot
make is listed with the reason (``unavailable``), and ``bench`` reports it as such rather than
measuring something else under its name.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lepton_opt.evaluation.accuracy import ort_session
from lepton_opt.errors import OptionError


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    name: str
    description: str
    engine: str  # "onnxruntime" or "lepton-opt"
    level: str | None = None  # graph pipeline run first (ort-opt) or before lowering (lepton-opt builds)
    unavailable: str | None = None  # why this version cannot build it
    pruned: bool = False  # built from the pruned model (see PruneOptions)
    precision: str | None = None  # "fp16"/"bf16" (mixed precision) or "int8" (static QDQ) after the passes
    records: bool = True  # lepton-opt builds: apply the tuning records of the user cache


@dataclasses.dataclass(frozen=True)
class PruneOptions:
    """How the ``pruned`` and ``ort-pruned`` variants prune the model."""

    method: str = "channel"
    sparsity: float = 0.3
    channel_multiple: int = 8

    def describe(self) -> str:
        if self.method == "channel":
            return (f"channel pruning, {100 * self.sparsity:g}% of the channels of every prunable group "
                    f"(counts kept rounded to a multiple of {self.channel_multiple})")
        return f"{self.method} pruning, {100 * self.sparsity:g}% of the weights"


BASELINE = "ort"

VARIANTS: dict[str, VariantSpec] = {v.name: v for v in [
    VariantSpec(BASELINE, "onnxruntime fp32, all graph optimizations (the baseline)", "onnxruntime"),
    VariantSpec("ort-opt", "onnxruntime fp32 on the model after lepton-opt's -O2 passes", "onnxruntime", "O2"),
    VariantSpec("fp32", "lepton-opt build, fp32, -O2 passes, with the tuning records of the cache (untuned if "
                "there are none)", "lepton-opt", "O2"),
    VariantSpec("fp32-untuned", "lepton-opt build, fp32, -O2 passes, default schedules (tuning records ignored)",
                "lepton-opt", "O2", records=False),
    VariantSpec("fp32-O0", "lepton-opt build, fp32, no graph passes, default schedules", "lepton-opt", "O0",
                records=False),
    VariantSpec("fp16", "lepton-opt build, fp16 mixed precision (default block list, fp32 IO), -O2",
                "lepton-opt", "O2", precision="fp16"),
    VariantSpec("bf16", "lepton-opt build, bf16 mixed precision (default block list, fp32 IO), -O2",
                "lepton-opt", "O2", precision="bf16"),
    VariantSpec("ort-fp16", "onnxruntime on lepton-opt's fp16 model (-O2 passes, then fp16)", "onnxruntime",
                "O2", precision="fp16"),
    VariantSpec("int8", "lepton-opt build, int8 static quantization (QDQ: per-channel int8 weights, uint8 "
                "activations, minmax calibration), -O2", "lepton-opt", "O2", precision="int8"),
    VariantSpec("ort-int8", "onnxruntime on lepton-opt's int8 QDQ model", "onnxruntime", "O2", precision="int8"),
    VariantSpec("pruned", "lepton-opt build of the pruned model (-O2 passes)", "lepton-opt", "O2",
                pruned=True),
    VariantSpec("ort-pruned", "onnxruntime fp32 on the pruned model", "onnxruntime", pruned=True),
]}

DEFAULT_VARIANTS = (BASELINE, "fp32")


def resolve_variants(names: str | list[str] | tuple[str, ...] | None) -> list[VariantSpec]:
    """The variants named (comma-separated or a list), the baseline first and added if missing."""
    if names is None:
        names = list(DEFAULT_VARIANTS)
    elif isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise OptionError(f"unknown variant(s) {', '.join(map(repr, unknown))}: choose from {', '.join(VARIANTS)}")
    ordered = [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]
    return [VARIANTS[n] for n in ordered]


@dataclasses.dataclass
class BuiltVariant:
    """A variant ready to run at one batch size."""

    spec: VariantSpec
    run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
    timed: Callable[[Mapping[str, np.ndarray]], Callable[[], object]]  # feeds -> a call to time
    build_s: float
    artifact_bytes: int
    probe: tuple[str, Path]  # (kind, path) for the memory probe: ("onnxruntime", model) or ("lepton-opt", artifact)
    target: dict | None = None
    compiled: Any = None  # lepton-opt builds: the CompiledModel (kernel profiles)


def build_variant(spec: VariantSpec, source, model_bytes: bytes, *, shapes: Mapping[str, list[int]],
                  target: str, threads: int, workdir: Path, tag: str, output_names: list[str],
                  prune: PruneOptions | None = None, pruned_cache: dict | None = None,
                  calibration=None, quantized_cache: dict | None = None) -> BuiltVariant:
    """Build ``spec`` for inputs of ``shapes``; files it needs (model, artifact) go to ``workdir``.
    The pruned model is kept in ``pruned_cache`` for the next pruned variant at these shapes, the
    int8 model (calibrated on ``calibration``, else seeded inputs) in ``quantized_cache``."""
    import lepton_opt.api as api

    start = time.perf_counter()
    if spec.precision == "int8":
        quantized_cache = {} if quantized_cache is None else quantized_cache
        if "model" not in quantized_cache:
            quantized_cache["model"] = api.quantize(source, level=spec.level, input_shapes=shapes,
                                                    data=calibration).model
        data = quantized_cache["model"].SerializeToString()
        if spec.engine == "onnxruntime":
            return _ort_variant(spec, data, threads, workdir, tag, output_names, start)
        # The passes ran before quantizing; the build lowers the QDQ model as it is.
        compiled = api.compile(quantized_cache["model"], target, level="O0", use_cache=spec.records)
        return _lepton_variant(spec, compiled, workdir, tag, start)
    if spec.pruned:
        prune = prune or PruneOptions()
        pruned_cache = {} if pruned_cache is None else pruned_cache
        if "model" not in pruned_cache:
            pruned_cache["model"] = api.prune(source, prune.method, prune.sparsity, input_shapes=shapes,
                                              channel_multiple=prune.channel_multiple).model
        source = pruned_cache["model"]
        model_bytes = source.SerializeToString()
    if spec.engine == "onnxruntime":
        data = model_bytes
        if spec.level is not None:
            data = api.optimize(source, spec.level, input_shapes=shapes,
                                precision=spec.precision).model.SerializeToString()
        return _ort_variant(spec, data, threads, workdir, tag, output_names, start)
    compiled = api.compile(source, target, input_shapes=shapes, level=spec.level, precision=spec.precision,
                           use_cache=spec.records)
    return _lepton_variant(spec, compiled, workdir, tag, start)


def _ort_variant(spec, data: bytes, threads: int, workdir: Path, tag: str, output_names, start: float) -> BuiltVariant:
    session = ort_session(data, threads=threads, optimize=True, spinning=False)
    build_s = time.perf_counter() - start
    path = workdir / f"{spec.name}-{tag}.onnx"
    path.write_bytes(data)

    def run(feeds):
        return dict(zip(output_names, session.run(output_names, dict(feeds))))

    def timed(feeds):
        feeds = dict(feeds)
        return lambda: session.run(output_names, feeds)

    return BuiltVariant(spec, run, timed, build_s, len(data), ("onnxruntime", path))


def _lepton_variant(spec, compiled, workdir: Path, tag: str, start: float) -> BuiltVariant:
    build_s = time.perf_counter() - start
    path = compiled.save(workdir / f"{spec.name}-{tag}.lepton")
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())

    def timed_compiled(feeds):
        feeds = dict(feeds)
        return lambda: compiled.run(feeds)

    return BuiltVariant(spec, compiled.run, timed_compiled, build_s, size, ("lepton-opt", Path(path)),
                        target=compiled.target, compiled=compiled)
