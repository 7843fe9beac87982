"""The Python API: composes load -> passes -> lower -> build. No heavy logic of its own."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from lepton_opt.evaluation.accuracy import VerifyReport, compare, merge_reports, ort_session, random_feeds
from lepton_opt.errors import LeptonError, OptionError, UnsupportedModelError, first_line
from lepton_opt.ir.load import InputShapes, LoadedModel, ModelSource, load_model
from lepton_opt.passes.base import OpCounts, PassManager, PassRecord, PassSummary, RolledBack, Verifier, op_histogram
from lepton_opt.passes.registry import DEFAULT_LEVEL, FUSIONS, build_passes, pipeline_names


def load(model: ModelSource, input_shapes: InputShapes | None = None) -> ir.Model:
    """Load ``model`` (path, bytes, ``onnx.ModelProto``) into the IR, with shape overrides applied."""
    return load_model(model, input_shapes).model


@dataclasses.dataclass
class OptimizeResult(OpCounts):
    """What :func:`optimize` did. ``model`` is an ``onnx.ModelProto``, or an ``ir.Model`` when an
    ``ir.Model`` was given; ``table`` has one row per pass (rewrites, node and op changes, time)
    and ``records`` every single pass run."""

    ir_model: ir.Model
    passes: list[str]
    table: list[PassSummary]
    records: list[PassRecord]
    iterations: int
    converged: bool
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    as_ir: bool = False
    precision: Any = None  # a lepton_opt.passes.precision.PrecisionResult when a precision was asked for
    # Passes rolled back because they raised or left an invalid model (one line each); the
    # pipeline went on without them.
    warnings: list[str] = dataclasses.field(default_factory=list)

    @functools.cached_property
    def model(self) -> onnx.ModelProto | ir.Model:
        return self.ir_model if self.as_ir else ir.serde.serialize_model(self.ir_model)


def optimize(
    model: ModelSource,
    level: str = DEFAULT_LEVEL,
    *,
    passes: Sequence[str] | str | None = None,
    input_shapes: InputShapes | None = None,
    verify_each: bool = False,
    seed: int = 0,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    max_iterations: int | None = None,
    precision: str | None = None,
    **precision_options: Any,
) -> OptimizeResult:
    """Run the ``level`` pipeline ("O0".."O3") or the named ``passes`` to a fixed point.

    The given model is never modified. ``input_shapes`` fixes dynamic dims first (which lets
    shape computations fold). With ``verify_each``, onnxruntime runs the model on inputs seeded
    by ``seed`` before the first pass and after every pass that changed it, and
    ``VerificationError`` names the first pass that moved an output beyond ``atol``/``rtol``.

    ``precision`` ("fp16" or "bf16") converts the optimized model to mixed precision; the
    ``precision_options`` are those of :func:`lepton_opt.passes.precision.convert_precision`
    (keep_io_types, op_block_list, node_block_list, max_error, min_cosine, data, samples).
    """
    if precision == "int8":
        raise LeptonError("int8 is a quantization, not a mixed precision: use lepton_opt.quantize "
                          "(lepton-opt quantize), or compile(..., precision='int8')")
    _check_precision_options(precision, precision_options)
    names = pipeline_names(level, passes)
    loaded = load_model(model, input_shapes)
    as_ir = isinstance(model, ir.Model)
    ir_model = loaded.model
    ops_before = dict(op_histogram(ir_model))
    verifier = Verifier(ir_model, seed=seed, atol=atol, rtol=rtol) if verify_each else None
    manager_options = {} if max_iterations is None else {"max_iterations": max_iterations}
    result = PassManager(build_passes(names), verifier=verifier, **manager_options)(ir_model)
    final, converted = result.model, None
    if precision is not None:
        converted = _convert_precision(final, precision, seed=seed, **precision_options)
        final = converted.model
    return OptimizeResult(final, names, result.summary(), result.records, result.iterations,
                          result.converged, ops_before, dict(op_histogram(final)), as_ir, converted,
                          result.warnings)


def _precision_function(precision: str | None):
    """The function behind ``precision``: the mixed-precision conversion or int8 quantization."""
    if precision == "int8":
        from lepton_opt.passes.quantize import quantize as run_quantize

        return run_quantize
    from lepton_opt.passes.precision import convert_precision

    return convert_precision


def _check_precision_options(precision: str | None, options: Mapping[str, Any]) -> None:
    import inspect

    function = _precision_function(precision)
    allowed = set(inspect.signature(function).parameters) - {"model", "precision", "input_shapes", "seed",
                                                             "source"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; {precision or 'precision'} options "
                        f"are {', '.join(sorted(allowed))}")
    if options and precision is None:
        raise LeptonError(f"{', '.join(sorted(options))} apply to a precision conversion: "
                          "give precision='fp16', 'bf16' or 'int8'")


def _convert_precision(model: ir.Model, precision: str, **options):
    """Mixed precision (a PrecisionResult) or int8 quantization (a QuantizeResult), on the IR."""
    if precision != "int8":
        return _precision_function(precision)(model, precision, **options)
    result = _precision_function(precision)(model, **options)
    result.ir_model = ir.serde.deserialize_model(result.model)
    return result


@dataclasses.dataclass
class _Prepared:
    loaded: LoadedModel
    passes: list[str]  # the passes that ran (rolled-back ones left out), plus the precision step
    converted: Any  # PrecisionResult / QuantizeResult, or None
    rolled_back: list[RolledBack]
    fused: list[str]  # the fusion passes that rewrote something
    source_ops: frozenset[str] = frozenset()  # op types of the model as loaded, before any pass


def _prepare(model: ModelSource, input_shapes: InputShapes | None,
             level: str, precision: str | None = None,
             precision_options: Mapping[str, Any] | None = None, exclude: Sequence[str] = ()) -> _Prepared:
    """Load and run the ``level`` pipeline without the ``exclude`` passes (then the precision
    conversion). A pass that raises or leaves an invalid model is rolled back by the PassManager
    and left out of the pass names."""
    loaded = load_model(model, input_shapes)
    source_ops = frozenset(n.op_type for n in ir.traversal.RecursiveGraphIterator(loaded.model.graph))
    wanted = [name for name in pipeline_names(level) if name not in exclude]
    result = PassManager(build_passes(wanted))(loaded.model)
    skipped = {r.name for r in result.rolled_back}
    names = [name for name in wanted if name not in skipped]
    fused = [row.name for row in result.summary() if row.name in FUSIONS and row.rewrites]
    converted = None
    if precision is not None:
        converted = _convert_precision(loaded.model, precision, **(precision_options or {}))
        loaded = dataclasses.replace(loaded, model=converted.ir_model if precision == "int8" else converted.model)
        names = [*names, "quantize-int8" if precision == "int8" else f"precision-{precision}"]
    return _Prepared(loaded, names, converted, result.rolled_back, fused, source_ops)


def _warn_rolled_back(prepared: _Prepared) -> LoadedModel:
    """The prepared model, after a warning for each pass the PassManager rolled back."""
    import warnings as _warnings

    for rolled in prepared.rolled_back:
        _warnings.warn(str(rolled), stacklevel=3)
    return prepared.loaded


# The pipeline run before lowering: simplification and fusions, without O3's size trade-offs.
COMPILE_LEVEL = "O2"


def compile(  # noqa: A001 - the public name the product promises
    model: ModelSource,
    target: str = "llvm",
    *,
    input_shapes: InputShapes | None = None,
    mcpu: str | None = None,
    mattr: str | Sequence[str] | None = None,
    cuda_arch: str | None = None,
    level: str | None = None,
    precision: str | None = None,
    records: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    use_cache: bool = True,
    fallback: bool = True,
    **precision_options: Any,
):
    """Compile ``model`` for ``target`` ("llvm"/"cpu" or "cuda") and return a ``CompiledModel``.

    Nodes that cannot be lowered (ops without a lowering, contrib ops, outputs whose shape
    depends on the data) run in onnxruntime, the rest is compiled: the result is then a
    ``PartitionedModel``, ``compiled.warnings`` names those nodes and ``manifest["fallback"]``
    says why for each. ``fallback=False`` (CLI ``--no-fallback``) raises
    ``UnsupportedModelError`` listing them instead.

    CPU code (and the host code of CUDA builds) is for this CPU and its features, or for the LLVM
    CPU ``mcpu`` ("x86-64-v3" for a fleet), with the LLVM features ``mattr`` ("+avx2,-avx512f")
    added or removed; the manifest records them and loading refuses a host without them.

    ``input_shapes`` maps input names to full shapes and fixes dynamic dimensions; dims left
    symbolic are compiled as dynamic where the lowering allows it. ``level`` is the graph
    pipeline run before lowering ("O0" = none; default "O2", see :data:`COMPILE_LEVEL`).
    ``precision`` ("fp16"/"bf16") converts the model to mixed precision after the passes, with
    the ``precision_options`` of :func:`optimize`; "int8" quantizes it after the passes (static
    QDQ by default) with the options of :func:`quantize` (mode, data, samples, method, ...) and
    builds the integer kernels.

    CPU kernels with a tuning record (:func:`tune`) take their tuned schedule: records are read
    from the ``records`` directories and, with ``use_cache``, from the user cache
    (``~/.cache/lepton-opt/tuning``, or ``$LEPTON_OPT_CACHE``). ``manifest["tuning"]`` says how
    many kernels were tuned; unreadable record lines are skipped with a warning
    (``compiled.warnings``).
    """
    import warnings as _warnings

    from lepton_opt.targets.build import resolve_target
    from lepton_opt.targets.compile import compile_model, compile_with_fallback

    _check_precision_options(precision, precision_options)
    spec = resolve_target(target, mcpu=mcpu, cuda_arch=cuda_arch, mattr=mattr)
    level = level or COMPILE_LEVEL
    prepared = _prepare(model, input_shapes, level, precision, precision_options)
    notes = [str(r) for r in prepared.rolled_back]

    def build(prepared: _Prepared):
        options = dict(source=prepared.loaded.source, sha256=prepared.loaded.sha256, opset=prepared.loaded.opset,
                       passes=prepared.passes, records=_paths(records), use_cache=use_cache, warn=notes.append)
        if not fallback:
            return compile_model(prepared.loaded.model, spec, **options)

        def refuse(nodes) -> bool:
            # A node a fusion made: compiling without the fusions beats running it in onnxruntime.
            return bool(prepared.fused) and any(n.op_type not in prepared.source_ops for n in nodes)

        return compile_with_fallback(prepared.loaded.model, spec, refuse=refuse, **options)

    try:
        compiled = build(prepared)
    except UnsupportedModelError as error:
        # A fused op the lowering cannot take for these shapes: lower what it replaced instead.
        if not prepared.fused:
            raise
        fused = prepared.fused
        prepared = _prepare(model, input_shapes, level, precision, precision_options, exclude=fused)
        notes.append(f"the model as {', '.join(fused)} rewrote it did not compile ({error}); compiled "
                     "without those passes")
        compiled = build(prepared)
        compiled.manifest["passes_refused_by_lowering"] = {name: str(error) for name in fused}
    converted = prepared.converted
    compiled.warnings = notes
    if prepared.rolled_back:
        compiled.manifest["passes_rolled_back"] = {r.name: r.reason for r in prepared.rolled_back}
    for note in notes:
        _warnings.warn(note, stacklevel=2)
    compiled.precision = converted  # the PrecisionResult / QuantizeResult (kept nodes, guard), or None
    if precision == "int8":
        compiled.manifest["precision"] = {
            "precision": "int8", "mode": converted.mode, "method": converted.method,
            "quantized_nodes": converted.quantized, "calibration": converted.calibration,
            "kept_float": {k.name: k.reason for k in converted.excluded},
        }
    elif converted is not None:
        compiled.manifest["precision"] = {
            "precision": precision, "converted_nodes": len(converted.plan.converted),
            "kept_fp32": {k.name: k.reason for k in converted.plan.kept.values()},
        }
    return compiled


def _paths(given) -> list[str | os.PathLike]:
    if given is None:
        return []
    if isinstance(given, (str, os.PathLike)):
        return [given]
    return list(given)


def tune(
    model: ModelSource,
    target: str = "llvm",
    *,
    budget: float | str | None = None,
    trials: int | None = None,
    records: str | os.PathLike | None = None,
    input_shapes: InputShapes | None = None,
    mcpu: str | None = None,
    level: str | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    batch: int | None = None,
    progress=None,
    confirm: bool = True,
    precision: str | None = None,
    **precision_options: Any,
):
    """Tune the CPU kernels of ``model`` as :func:`compile` would build it (same ``level``,
    ``input_shapes``, ``precision`` and options) and store the fastest schedules as records.

    ``budget`` is seconds or a duration ("20m", "1h"); ``trials`` caps the candidates measured
    (default: a 20 minute budget). Records go to the user cache (``records``: a directory
    instead), where every later ``compile`` for this target finds them. ``rpc_tracker``
    ("HOST:PORT") and ``rpc_key`` measure on the devices registered with a TVM RPC tracker.
    ``progress`` is called with a :class:`lepton_opt.targets.tune.TuneProgress` after every
    batch of candidates. ``confirm`` (default): the last 20% of the budget builds the whole
    model with each kernel's best few tiles and keeps the tile fastest inside the model (a kernel
    timed alone is not timed in the cache state a model run leaves it; not with ``rpc_tracker``).
    Returns a :class:`lepton_opt.targets.tune.TuneResult`.
    """
    import importlib.util

    missing = [m for m in ("psutil", "cloudpickle") if importlib.util.find_spec(m) is None]
    if missing:
        raise LeptonError(f"tuning needs {' and '.join(missing)} (MetaSchedule's builder and runner pools): "
                          "pip install 'lepton-opt[tune]'")
    from lepton_opt.targets.build import resolve_target
    from lepton_opt.targets.tune import DEFAULT_BATCH, RPCSettings, parse_budget, parse_tracker, tune_model

    _check_precision_options(precision, precision_options)
    if (rpc_tracker is None) != (rpc_key is None):
        raise LeptonError("--rpc-tracker and --rpc-key go together: the tracker's HOST:PORT and the key its "
                          "devices registered under")
    rpc = None
    if rpc_tracker is not None:
        host, port = parse_tracker(rpc_tracker)
        rpc = RPCSettings(host, port, rpc_key)
    budget_s = parse_budget(budget) if isinstance(budget, str) else budget
    if budget_s is None and trials is None:
        budget_s = DEFAULT_TUNING_BUDGET_S
    spec = resolve_target(target, mcpu=mcpu)
    loaded = _warn_rolled_back(_prepare(model, input_shapes, level or COMPILE_LEVEL, precision, precision_options))
    return tune_model(loaded.model, spec, source=loaded.source, budget_s=budget_s, trials=trials, records=records,
                      rpc=rpc, batch=batch or DEFAULT_BATCH, progress=progress, confirm=confirm)


DEFAULT_TUNING_BUDGET_S = 20 * 60


def quantize(model: ModelSource, mode: str = "static", *, level: str = COMPILE_LEVEL,
             input_shapes: InputShapes | None = None, **options: Any):
    """Quantize ``model`` to int8 after the ``level`` graph pipeline (default "O2": batch norms
    folded into the convolutions first). Returns a :class:`lepton_opt.passes.quantize.QuantizeResult`
    whose ``model`` is a standard ``onnx.ModelProto`` (QDQ for "static", DynamicQuantizeLinear +
    MatMulInteger for "dynamic", int8 weights + DequantizeLinear for "weight-only").

    Options (see :func:`lepton_opt.passes.quantize.quantize`): data, samples, method, percentile,
    per_channel, activation_type, symmetric_activations, op_types, exclude_nodes,
    exclude_op_types, keep_first_last, min_cosine, max_accuracy_drop, labels, seed, progress.
    """
    from lepton_opt.passes.quantize import quantize as run_quantize

    loaded = _warn_rolled_back(_prepare(model, input_shapes, level))
    return run_quantize(loaded.model, mode=mode, source=loaded.source, **options)


def prune(model: ModelSource, method: str = "channel", sparsity: float | None = None, **options):
    """Prune ``model`` ("magnitude", "channel" or "2:4"); returns a
    :class:`lepton_opt.passes.prune.PruneResult` whose ``model`` is a standard ``onnx.ModelProto``.

    Options (see :func:`lepton_opt.passes.prune.prune`): scope, criterion, layers, max_error,
    max_accuracy_drop, data, labels, samples, seed, input_shapes.
    """
    from lepton_opt.passes.prune import prune as run_prune

    return run_prune(model, method, sparsity, **options)


def benchmark(model: ModelSource, target: str = "llvm", **options):
    """Latency, throughput, memory and accuracy of variants of ``model`` against onnxruntime.

    Returns a :class:`lepton_opt.bench.runner.BenchmarkResult`; the options are those of
    :func:`lepton_opt.bench.runner.benchmark` (variants, input_shapes, threads, batches, data,
    labels, samples, seed, rounds, duration, warmup, memory, progress, report_dir).
    """
    from lepton_opt.bench.runner import benchmark as run_benchmark

    return run_benchmark(model, target, **options)


def profile(model, *, feeds: Mapping[str, np.ndarray] | None = None, runs: int = 10, warmup: int = 2,
            input_shapes: InputShapes | None = None, seed: int = 0, **compile_options):
    """Per-kernel profile of a CPU build (:class:`lepton_opt.targets.profiling.KernelProfile`):
    where a run's time goes and why. ``model``: a compiled model, an artifact directory, or an
    ONNX model (compiled here for llvm with ``input_shapes`` and ``compile_options``). Inputs:
    ``feeds``, else seeded ones (``seed``; symbolic dims from ``input_shapes``, else 1)."""
    from lepton_opt.targets.artifact import MANIFEST
    from lepton_opt.targets.profiling import profile as profile_kernels

    if runs < 1 or warmup < 0:
        raise OptionError(f"runs must be at least 1 and warmup at least 0 (got runs={runs}, warmup={warmup})")
    if isinstance(model, (str, os.PathLike)) and (Path(model) / MANIFEST).is_file():
        model = load_compiled(model)
    elif not hasattr(model, "manifest"):
        model = compile(model, "llvm", input_shapes=input_shapes, **compile_options)
    if feeds is None:
        feeds = random_feeds(model.inputs, seed=seed, dims=_symbol_values(model.inputs, input_shapes or {}))
    return profile_kernels(model, feeds, runs=runs, warmup=warmup)


def save_model(model, path: str | os.PathLike, *, source: str | os.PathLike | None = None) -> list[str]:
    """Write ``model`` (an ``onnx.ModelProto`` or ``ir.Model``) to ``path`` whole or not at all:
    through a temporary file in the same directory and a rename, after ``onnx.checker`` accepted
    it. An invalid result is an error (a pass produced it), unless ``source`` (the model it was
    made from) fails the checker too: then it is written, and the returned notes say so. Models
    too large for one protobuf (2 GB) keep their weights in ``PATH.data`` beside it."""
    import shutil
    import tempfile

    output = Path(path)
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    output.parent.mkdir(parents=True, exist_ok=True)
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    notes = []
    try:
        if weights < _SINGLE_FILE_LIMIT:
            ir.save(model, tmp / output.name)
        else:
            ir.save(model, tmp / output.name, external_data=output.name + ".data")
        try:
            onnx.checker.check_model(str(tmp / output.name))
        except onnx.checker.ValidationError as e:
            if source is None or _passes_checker(source):
                raise  # a pass produced invalid ONNX: a lepton-opt bug, raised before anything is renamed
            notes.append(f"{Path(source).name} itself fails onnx.checker, and so does the output: {first_line(e)}")
        for f in tmp.iterdir():
            if f.name != output.name:
                os.replace(f, output.parent / f.name)
        os.replace(tmp / output.name, output)  # the model last: it is what users look for
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return notes


# Protobuf cannot hold 2 GB; keep a margin for the graph itself.
_SINGLE_FILE_LIMIT = 1_800_000_000


def _passes_checker(path: str | os.PathLike) -> bool:
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError:
        return False
    return True


def load_compiled(path: str | os.PathLike):
    """Load a compiled artifact directory (``lepton-opt compile -o DIR``)."""
    from lepton_opt.targets.artifact import load_compiled as _load

    return _load(path)


def verify(compiled, model: ModelSource, *, feeds: Mapping[str, np.ndarray] | None = None, data=None,
           input_shapes: InputShapes | None = None, seed: int = 0, atol: float = 1e-4,
           rtol: float = 1e-4) -> VerifyReport:
    """Run ``compiled`` and onnxruntime on the same inputs and compare every output: ``feeds``
    (one run), else every sample of ``data`` (an ``.npz`` path or mapping, input name -> samples
    on axis 0, run in batches of the compiled batch size; the report holds the worst of them),
    else seeded inputs (symbolic dims from ``input_shapes``, else 1, or longer where onnxruntime
    cannot run the model that short: ``report.dims`` names the sizes taken)."""
    loaded = load_model(model)
    try:
        session = ort_session(ir.serde.serialize_model(loaded.model))
    except Exception as e:  # noqa: BLE001 - onnxruntime refuses a model lepton-opt compiled
        raise _cannot_verify(loaded.source, e) from None
    names = [o.name for o in session.get_outputs()]

    def references(runs: list) -> list[dict]:
        return [dict(zip(names, session.run(names, _ort_feeds(session, f)))) for f in runs]

    dims: dict[str, int] = {}
    if feeds is not None or data is not None:
        if feeds is not None:
            runs = [feeds]
        else:
            from lepton_opt.evaluation.data import ModelInput, accuracy_inputs

            inputs = [ModelInput(i["name"], i["dtype"], list(i["shape"])) for i in compiled.inputs]
            first = compiled.inputs[0]["shape"][0] if compiled.inputs and compiled.inputs[0]["shape"] else 1
            runs = accuracy_inputs(inputs, first if isinstance(first, int) else 1, data, None, 1, seed,
                                   compiled.manifest.get("source", "model")).feeds
        try:
            expected = references(runs)
        except Exception as e:  # noqa: BLE001 - onnxruntime cannot run the model on these inputs
            raise _cannot_verify(loaded.source, e) from None
    else:
        # Symbolic dims the user did not fix take 1, unless onnxruntime cannot run the model that
        # short (an audio encoder's convolution front end needs hundreds of samples): then the
        # free dims grow until it can, and the report says which sizes were used.
        given = _symbol_values(compiled.inputs, input_shapes or {})
        free = sorted({d for i in compiled.inputs for d in i["shape"] if isinstance(d, str)} - set(given))
        failure = None
        for sizes in _verify_dim_candidates(free):
            dims = {**sizes, **given}
            runs = [random_feeds(compiled.inputs, seed=seed, dims=dims)]
            try:
                expected = references(runs)
                break
            except Exception as e:  # noqa: BLE001 - too short for the model: the next size is tried
                failure = failure or e
        else:
            raise _cannot_verify(loaded.source, failure) from None
    report = merge_reports([compare(reference, compiled.run(f), atol=atol, rtol=rtol)
                            for reference, f in zip(expected, runs)])
    report.dims = {d: v for d, v in dims.items() if v != 1}
    return report


# The sizes symbolic dims take in seeded verification, shortest first (see verify).
VERIFY_DIM_SIZES = (1, 16, 256, 4096, 16000)


def _verify_dim_candidates(free: list[str]):
    """Sizes for the free symbolic dims, in the order verify tries them: all 1; then one dim grown
    at a time (an audio length, with the batch left at 1); then all grown together."""
    ones = dict.fromkeys(free, 1)
    yield ones
    for dim in free:
        for size in VERIFY_DIM_SIZES[1:]:
            yield {**ones, dim: size}
    if len(free) > 1:
        for size in VERIFY_DIM_SIZES[1:]:
            yield dict.fromkeys(free, size)


def _cannot_verify(source: str, error: BaseException) -> LeptonError:
    return LeptonError(f"{source}: onnxruntime cannot run the model to verify against ({first_line(error)[:300]}); "
                       "compile without --verify, or verify on real inputs with --verify-data")


def _ort_feeds(session, feeds: Mapping[str, np.ndarray]) -> dict:
    """``feeds`` as onnxruntime takes them: numpy cannot hand it a bfloat16 array (ml_dtypes),
    so those become float32 for a float input and an OrtValue for a bfloat16 one."""
    import onnxruntime as ort

    types = {i.name: i.type for i in session.get_inputs()}
    out = {}
    for name, value in feeds.items():
        value = np.asarray(value)
        if value.dtype.name == "bfloat16":
            if types.get(name) == "tensor(bfloat16)":
                value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(value.view(np.uint16), 16)
            else:
                value = value.astype(np.float32)
        out[name] = value
    return out


def _symbol_values(inputs: list[dict], input_shapes: Mapping[str, Any]) -> dict[str, int]:
    values: dict[str, int] = {}
    for spec in inputs:
        given = input_shapes.get(spec["name"])
        if given is None:
            continue
        for dim, value in zip(spec["shape"], given):
            if isinstance(dim, str):
                values[dim] = int(value)
    return values


@dataclasses.dataclass
class ModelSummary:
    source: str
    opset: int
    inputs: list[dict]
    outputs: list[dict]
    op_histogram: dict[str, int]
    num_nodes: int
    num_parameters: int
    unsupported: dict[str, list[str]]


def inspect_model(model: ModelSource, input_shapes: InputShapes | None = None) -> ModelSummary:
    """Inputs, outputs, op histogram, parameter count and the ops that would not lower."""
    from lepton_opt.targets.compile import unsupported_ops

    loaded = load_model(model, input_shapes)
    graph = loaded.model.graph
    histogram = op_histogram(loaded.model)
    params = sum(int(np.prod(v.shape.numpy())) for v in graph.initializers.values()
                 if v.shape is not None and v.shape.is_static())
    return ModelSummary(
        source=loaded.source,
        opset=loaded.opset,
        inputs=[_value_info(v) for v in graph.inputs if not v.is_initializer()],
        outputs=[_value_info(v) for v in graph.outputs],
        op_histogram=dict(histogram.most_common()),
        num_nodes=sum(histogram.values()),
        num_parameters=params,
        unsupported=unsupported_ops(loaded.model),
    )


def _value_info(value: ir.Value) -> dict:
    shape = None if value.shape is None else [
        d if isinstance(d, int) else (d.value if d.value is not None else "?") for d in value.shape
    ]
    return {"name": value.name, "dtype": value.dtype.name if value.dtype is not None else "?", "shape": shape}


__all__ = ["LeptonError", "OptimizeResult", "benchmark", "compile", "prune", "inspect_model", "load", "load_compiled", "optimize",
           "tune", "verify"]
