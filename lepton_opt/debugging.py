"""Where a model's outputs first go wrong: every intermediate value against onnxruntime fp32.

:func:`debug` runs the *reference*, onnxruntime (CPU, graph optimizations off) on the model as
loaded with every value a node computes exposed as a graph output (Polygraphy's
``--onnx-outputs mark all``), and a *candidate* with its values exposed the same way, on the
same inputs. It compares each value the candidate still has, under the same name, in the
reference's topological order (:func:`lepton_opt.evaluation.accuracy.compare`: a value non-finite on
one side only is a failure, with the count of such elements) and names the first node whose
output is beyond ``atol``/``rtol``. The candidates:

* ``precision="fp16"`` / ``"bf16"``: lepton-opt's mixed-precision conversion of the model as
  loaded (no graph passes, so every value keeps its name), run as the accuracy guard of
  :mod:`lepton_opt.passes.precision` scores it: the float32 model with each low-precision value
  rounded through a Cast pair (float32 compute, low-precision storage, as lepton-opt's build
  computes). Running the converted file itself in onnxruntime's CPU provider would not do:
  it computes float16 ops without a float16 kernel in float32 and drops the Cast pair between
  two of them, which hides a float16 overflow; it has almost no bfloat16 kernels.
* ``precision="int8"``: :func:`lepton_opt.quantize` (static QDQ, calibrated on ``data`` or
  seeded inputs) run in onnxruntime; each float value is compared with the value that replaced
  it in the QDQ model (the output of the DequantizeLinear that reads its QuantizeLinear), or
  with the same-named value where it was not quantized, as onnxruntime's ``qdq_loss_debug``
  pairs them. Each node is also charged with the error it *adds*: the error at its output
  minus the largest error at its inputs (errors scaled by the largest reference magnitude of
  the value); the verdict names the node adding the most.
* ``passes=[...]``: :func:`lepton_opt.optimize` with exactly those passes, run in onnxruntime.
* ``compile=True``: a lepton-opt build for this CPU (dynamic dims fixed to the shapes of the
  input compared) of the model with the values marked as extra outputs: at most
  ``max_values`` of them, evenly spaced in graph order, the graph outputs always included. A
  value that is an output cannot be fused away, so this is a build of that model. ``precision``
  may be combined with it (the build's own fp16/bf16/int8).
* ``artifact=DIR``: the same, rebuilt the way the artifact was (its CPU, precision and
  pipeline from its manifest); the artifact itself also runs and its outputs are compared with
  the reference and with the rebuild's.

This module does not import TVM: compiled builds go through :func:`lepton_opt.api.compile` and
artifacts through :func:`lepton_opt.api.load_compiled`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from lepton_opt.evaluation.accuracy import compare, ort_session
from lepton_opt.errors import InputError, LeptonError, OptionError, VerificationError, first_line
from lepton_opt.ir.load import InputShapes, ModelSource, load_model
from lepton_opt.passes.precision import name_nodes

SCHEMA_VERSION = 1
# Default tolerance per precision (None: a float32 candidate), as compile --verify's for fp16/bf16;
# int8 against fp32 is far looser by nature: expect it to diverge, and read the "added" column.
DEFAULT_TOLERANCE: dict[str | None, float] = {None: 1e-4, "fp16": 1e-2, "bf16": 5e-2, "int8": 5e-2}
# Values marked as extra outputs of a compiled build (each one is a real output of that build).
DEFAULT_MAX_VALUES = 64
_UNMATCHED_LISTED = 10


@dataclasses.dataclass
class DebugRow:
    """One value computed by a node of the reference, against the candidate's value of that name.

    ``max_abs``, ``max_rel``, ``cosine``, ``nonfinite`` and ``ok`` are
    :func:`lepton_opt.evaluation.accuracy.compare`'s (``nonfinite``: elements non-finite on one side
    only; then ``max_abs`` is infinite and ``cosine`` 0). ``error`` is ``max_abs`` over the
    largest finite reference magnitude of the value; ``added`` is ``error`` minus the largest
    ``error`` of the node's compared inputs (0 where an input is already non-finite)."""

    value: str
    node: str
    op_type: str
    shape: list[int]
    max_abs: float
    max_rel: float
    cosine: float
    nonfinite: int
    ok: bool
    error: float
    added: float
    candidate_value: str  # the candidate's name for it (int8: the DequantizeLinear output)

    def to_dict(self) -> dict:
        return _json_safe(dataclasses.asdict(self))


@dataclasses.dataclass
class DebugReport:
    """What :func:`debug` found. ``rows`` holds every compared value in the reference's
    topological order; ``first_divergent`` is the first row beyond tolerance (None: none is);
    ``most_added`` the row whose node adds the most error; ``verdict`` one line saying both
    (the node adding most is named for int8, where every quantized node adds some)."""

    model: str
    mode: str  # "fp16", "bf16", "int8", "passes", "compiled", "artifact"
    precision: str | None  # of the candidate (a compiled build's too): "fp16", "bf16", "int8" or None
    reference: str
    candidate: str
    inputs: str
    atol: float
    rtol: float
    rows: list[DebugRow]
    first_divergent: DebugRow | None
    most_added: DebugRow | None
    verdict: str
    notes: list[str]
    values: int  # values the reference computes (node outputs of the main graph)
    unmatched: list[str]  # reference values without a counterpart in the candidate
    artifact_ok: bool = True  # False when an artifact's own outputs differ from the reference

    @property
    def ok(self) -> bool:
        return self.first_divergent is None and self.artifact_ok

    @property
    def divergent(self) -> list[DebugRow]:
        return [r for r in self.rows if not r.ok]

    def to_dict(self) -> dict:
        """A strict-JSON-ready dict: non-finite numbers become null, and the row's
        ``nonfinite_fields`` says what they were ("inf", "-inf", "nan")."""
        doc = {
            "schema_version": SCHEMA_VERSION,
            "command": "debug",
            "model": self.model,
            "mode": self.mode,
            "precision": self.precision,
            "reference": self.reference,
            "candidate": self.candidate,
            "inputs": self.inputs,
            "atol": self.atol,
            "rtol": self.rtol,
            "ok": self.ok,
            "values": self.values,
            "compared": len(self.rows),
            "divergent": len(self.divergent),
            "unmatched": len(self.unmatched),
            "unmatched_values": self.unmatched[:_UNMATCHED_LISTED],
            "first_divergent": None if self.first_divergent is None else self.first_divergent.to_dict(),
            "most_added": None if self.most_added is None else self.most_added.to_dict(),
            "verdict": self.verdict,
            "notes": list(self.notes),
            "rows": [r.to_dict() for r in self.rows],
        }
        if any("nonfinite_fields" in r for r in doc["rows"]):
            doc["notes"].append("null stands for a non-finite number; each row's nonfinite_fields names it "
                                "(inf where a value is non-finite on one side only: see nonfinite)")
        return doc


def _json_safe(row: dict) -> dict:
    fields = {}
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            fields[key] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            row[key] = None
    if fields:
        row["nonfinite_fields"] = fields
    return row


@dataclasses.dataclass
class _Candidate:
    description: str
    outputs: dict[str, np.ndarray]  # reference value name -> the candidate's array
    names: dict[str, str]  # reference value name -> the candidate's value name
    notes: list[str]
    build_outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # a build's graph outputs


def debug(
    model: ModelSource,
    *,
    precision: str | None = None,
    passes: Sequence[str] | str | None = None,
    artifact: str | Any | None = None,
    compile: bool = False,  # noqa: A002 - the mode's name, as the CLI's --compile
    feeds: Mapping[str, np.ndarray] | None = None,
    data=None,
    input_shapes: InputShapes | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    samples: int | None = None,
    max_values: int = DEFAULT_MAX_VALUES,
    progress: Callable[[str], None] | None = None,
    **precision_options: Any,
) -> DebugReport:
    """Compare every intermediate value of a candidate with onnxruntime fp32 and name the first
    node beyond ``atol``/``rtol`` (see the module docstring for the candidates).

    Give one of ``precision`` ("fp16", "bf16", "int8"), ``passes`` (names or "a,b"),
    ``artifact`` (an artifact directory) or ``compile=True`` (optionally with ``precision``).
    Inputs: ``feeds`` (one run's arrays), else the first batch of ``data`` (an ``.npz`` or
    mapping, samples on axis 0), else inputs seeded by ``seed``. ``data`` also calibrates int8
    (else ``samples`` seeded batches, default 32) and a fp16/bf16 guard. ``precision_options``
    go to the conversion (those of :func:`lepton_opt.passes.precision.convert_precision`, e.g.
    ``node_block_list`` or ``max_error``, or of :func:`lepton_opt.quantize`).
    ``atol``/``rtol`` default to :data:`DEFAULT_TOLERANCE` of the precision. ``max_values``
    caps the values marked as outputs of a compiled build."""
    note = progress or (lambda _msg: None)
    mode = _mode(precision, passes, artifact, compile)
    if precision_options:
        from lepton_opt.api import _check_precision_options

        _check_precision_options(precision, precision_options)
    if max_values < 1:
        raise OptionError(f"max_values must be at least 1, got {max_values}")
    built = _load_artifact(artifact) if mode == "artifact" else None
    manifest = None if built is None else built.manifest
    if manifest is not None:
        precision = (manifest.get("precision") or {}).get("precision")
        input_shapes = {**_static_shapes(manifest["inputs"]), **dict(input_shapes or {})}
    tolerance = DEFAULT_TOLERANCE.get(precision, DEFAULT_TOLERANCE[None])
    atol = tolerance if atol is None else float(atol)
    rtol = tolerance if rtol is None else float(rtol)

    loaded = load_model(model, input_shapes)
    reference_model = loaded.model
    name_nodes(reference_model.graph)
    proto = ir.serde.serialize_model(reference_model)
    run_feeds, inputs = _feeds(reference_model, feeds, data, seed, loaded.source)
    if mode in ("compiled", "artifact") and not _static(reference_model):
        # One input is compared: build for its shapes (dynamic dims would build other kernels).
        shapes = {**{k: list(np.shape(v)) for k, v in run_feeds.items()}, **dict(input_shapes or {})}
        reference_model = load_model(model, shapes).model
        name_nodes(reference_model.graph)
        proto = ir.serde.serialize_model(reference_model)
    values = _computed_values(proto)  # name -> (node name, op type, input names, elem type), in order
    notes: list[str] = []

    if mode in ("fp16", "bf16"):
        note(f"converting to {mode}")
        candidate = _precision_candidate(proto, mode, data, seed, values, run_feeds, precision_options)
    elif mode == "int8":
        note("quantizing to int8")
        candidate = _int8_candidate(proto, data, samples, seed, values, run_feeds, precision_options, note)
    elif mode == "passes":
        note("running the passes")
        candidate = _passes_candidate(proto, passes, values, run_feeds)
    else:
        note("building with the values marked as outputs")
        candidate = _compiled_candidate(proto, values, run_feeds, max_values, precision, data, samples,
                                        precision_options, manifest)
    notes += candidate.notes
    note("running the reference")
    reference = _run_ort(_exposed(proto, [n for n in values if n in candidate.outputs], values), run_feeds,
                         "the reference (onnxruntime on the model as loaded)")

    rows = _rows(values, reference, candidate, atol, rtol)
    artifact_ok = True
    if manifest is not None:
        final = {o.name: reference[o.name] for o in proto.graph.output if o.name in reference}
        artifact_ok = _check_artifact(built, final, run_feeds, candidate, atol, rtol, loaded.sha256, notes)
    first = next((r for r in rows if not r.ok), None)
    most = max((r for r in rows if r.added > 0), key=lambda r: r.added, default=None)
    unmatched = [n for n in values if n not in candidate.outputs]
    verdict = _verdict(rows, first, most, precision, atol, rtol, artifact_ok)
    return DebugReport(loaded.source, mode, precision, "onnxruntime fp32 on the model as loaded",
                       candidate.description, inputs, atol, rtol, rows, first, most, verdict, notes, len(values),
                       unmatched, artifact_ok)


# ----------------------------------------------------------------------------------------
# Inputs, values, running
# ----------------------------------------------------------------------------------------

def _mode(precision, passes, artifact, build) -> str:
    if isinstance(passes, str):
        passes = passes.strip() or None
    given = [name for name, value in (("precision", precision), ("passes", passes), ("artifact", artifact),
                                      ("compile", build or None)) if value is not None]
    if not given:
        raise OptionError("debug what? give --precision fp16|bf16|int8, --passes A,B, --artifact DIR or --compile")
    if given == ["precision", "compile"]:
        given = ["compile"]
    if len(given) > 1:
        raise OptionError(f"give one of --precision, --passes, --artifact and --compile (got {', '.join(given)}); "
                          "--precision combines with --compile only")
    if precision is not None and precision not in ("fp16", "bf16", "int8"):
        raise OptionError(f"unknown precision {precision!r}; choose fp16, bf16 or int8")
    if given == ["precision"]:
        return precision
    return {"passes": "passes", "artifact": "artifact", "compile": "compiled"}[given[0]]


def _feeds(model: ir.Model, feeds, data, seed: int, source: str) -> tuple[dict[str, np.ndarray], str]:
    from lepton_opt.evaluation.data import accuracy_inputs, input_specs, resolve_batches

    specs = input_specs(model, None, source)
    if feeds is not None:
        names = {s.name for s in specs}
        unknown = sorted(set(feeds) - names)
        missing = sorted(names - set(feeds))
        if unknown or missing:
            raise InputError(f"{source}: feeds must give exactly the inputs {', '.join(sorted(names))}"
                             + (f"; unknown {', '.join(unknown)}" if unknown else "")
                             + (f"; missing {', '.join(missing)}" if missing else ""))
        return {k: np.asarray(v) for k, v in feeds.items()}, "the given feeds"
    batch = resolve_batches(specs, None, source)[0]
    batches = accuracy_inputs(specs, batch, data, None, 1, seed, source)
    if data is None:
        return batches.feeds[0], f"seeded random inputs (seed {seed}, batch {batch})"
    return batches.feeds[0], f"the first batch of {batches.description} (batch {batch})"


def _static(model: ir.Model) -> bool:
    return all(v.shape is not None and v.shape.is_static() for v in model.graph.inputs if not v.is_initializer())


_SKIPPED_TYPES = {onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED}


def _computed_values(proto: onnx.ModelProto) -> dict[str, tuple[str, str, list[str], int]]:
    """Every tensor a main-graph node computes whose element type is known, in graph order:
    name -> (node name, op type, input names, ONNX element type)."""
    types = _value_types(proto)
    values = {}
    for node in proto.graph.node:
        for name in node.output:
            if name and types.get(name) not in (None, *_SKIPPED_TYPES):
                values[name] = (node.name, node.op_type, [i for i in node.input if i], types[name])
    return values


def _value_types(proto: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - the declared types stand
        inferred = proto
    graph = inferred.graph
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output, *graph.input]
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}


def _exposed(proto: onnx.ModelProto, names: Sequence[str], types: Mapping[str, Any]) -> onnx.ModelProto:
    """A copy of ``proto`` whose graph also outputs ``names`` (``types``: name -> element type, or
    the ``_computed_values`` entries)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    present = {o.name for o in exposed.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            elem = types[name][3] if isinstance(types[name], tuple) else types[name]
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return exposed


def _run_exposed(proto: onnx.ModelProto, names: Mapping[str, str], feeds: Mapping[str, np.ndarray],
                 what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``proto`` run with the candidate values ``names.values()`` exposed; returns the arrays and
    the names by reference value name (values whose type inference cannot tell are left out)."""
    types = _value_types(proto)
    names = {ref: cand for ref, cand in names.items() if types.get(cand) not in (None, *_SKIPPED_TYPES)}
    outputs = _run_ort(_exposed(proto, list(names.values()), types), feeds, what)
    return {ref: outputs[cand] for ref, cand in names.items()}, names


def _run_ort(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    try:
        session = ort_session(proto)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, dict(feeds))))
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors all mean the same to the user
        first = first_line(e)
        raise LeptonError(f"debug needs onnxruntime to run {what}, and it cannot: {first}") from None


# ----------------------------------------------------------------------------------------
# Candidates
# ----------------------------------------------------------------------------------------

def _precision_candidate(proto, precision: str, data, seed: int, values, feeds, options) -> _Candidate:
    from lepton_opt.passes.precision import apply_plan, convert_precision

    options = dict(options)
    if data is not None and (options.get("max_error") is not None or options.get("min_cosine") is not None):
        options["data"] = data  # the guard's calibration data
    converted = convert_precision(proto, precision, seed=seed, **options)
    emulated, *_ = apply_plan(converted.planned, converted.plan, keep_io_types=True, emulate=True)
    candidate = ir.serde.serialize_model(emulated)
    produced = _produced(candidate)
    outputs, names = _run_exposed(candidate, {n: n for n in values if n in produced}, feeds,
                                  f"the {precision} emulation")
    plan = converted.plan
    type_name = {"fp16": "float16", "bf16": "bfloat16"}[precision]
    notes = [f"{len(plan.converted)} node(s) in {type_name}, {len(plan.kept)} kept in float32 by the plan"
             + (f" (e.g. {next(iter(plan.kept.values())).name}: {next(iter(plan.kept.values())).reason})"
                if plan.kept else ""),
             *converted.warnings]
    description = (f"lepton-opt's {precision} conversion, emulated in onnxruntime (float32 compute, {type_name} "
                   "storage, as lepton-opt's build computes)")
    return _Candidate(description, outputs, names, notes)


def _int8_candidate(proto, data, samples, seed: int, values, feeds, options, note) -> _Candidate:
    from lepton_opt.api import quantize

    options = dict(options)
    if samples is not None:
        options["samples"] = samples
    result = quantize(proto, data=data, seed=seed, progress=lambda msg: note(f"quantizing: {msg}"), **options)
    qdq = result.model
    produced = _produced(qdq)
    replaced = _dequantized(qdq)
    names = {}
    for n in values:
        if n in replaced:
            names[n] = replaced[n]
        elif n in produced:
            names[n] = n
    outputs, names = _run_exposed(qdq, names, feeds, "the int8 QDQ model")
    counts = ", ".join(f"{op} {k}" for op, k in sorted(result.quantized.items())) or "none"
    how = result.mode + (f", {result.method} calibration on {result.calibration}" if result.method else "")
    notes = [f"quantized {counts}; {len(result.excluded)} node(s) kept float", *result.warnings]
    description = f"lepton-opt's int8 quantization ({how}), run in onnxruntime"
    return _Candidate(description, outputs, names, notes)


def _dequantized(qdq: onnx.ModelProto) -> dict[str, str]:
    """Float value name -> the DequantizeLinear output that replaced it (Q -> DQ on the value)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in qdq.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    replaced = {}
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or not node.input or node.input[0] in replaced:
            continue
        dq = next((r for r in readers.get(node.output[0], []) if r.op_type == "DequantizeLinear"), None)
        if dq is not None:
            replaced[node.input[0]] = dq.output[0]
    return replaced


def _passes_candidate(proto, passes, values, feeds) -> _Candidate:
    from lepton_opt.api import optimize

    result = optimize(proto, passes=passes)
    optimized = result.model
    produced = _produced(optimized)
    what = f"the model after {', '.join(result.passes)}"
    try:
        outputs, names = _run_exposed(optimized, {n: n for n in values if n in produced}, feeds, what)
    except LeptonError as e:
        raise VerificationError(str(e)) from None  # the passes broke the model: the check fails (exit 1)
    return _Candidate(f"{what} (lepton-opt passes), run in onnxruntime", outputs, names, list(result.warnings))


def _compiled_candidate(proto, values, feeds, max_values: int, precision, data, samples, options,
                        manifest) -> _Candidate:
    from lepton_opt.api import compile as build

    marked, notes = _select(proto, list(values), max_values)
    exposed = _exposed(proto, marked, values)
    kwargs: dict[str, Any] = dict(options)
    level = None
    mcpu = None
    if manifest is not None:
        target = manifest.get("target", {})
        mcpu = target.get("mcpu") if not target.get("mattr") else None  # mattr: built for the host CPU
        ran = set(manifest.get("passes") or ())
        level = "O3" if "fold-large-constants" in ran else ("O2" if ran - {"precision-fp16", "precision-bf16",
                                                                           "quantize-int8"} else "O0")
    if precision is not None:
        kwargs["precision"] = precision
        if precision == "int8":
            kwargs.update({"data": data} | ({"samples": samples} if samples is not None else {}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = build(exposed, "llvm", mcpu=mcpu, level=level, **kwargs)
    outputs = compiled.run(feeds)
    notes += list(compiled.warnings)
    notes.append("the marked values are outputs of the build, so no kernel fuses them away: the build compared "
                 "is that of the model with those outputs")
    fallback = compiled.manifest.get("fallback")
    if fallback:
        notes.append(f"{len(fallback)} node(s) run in onnxruntime in this build (manifest fallback)")
    what = "rebuilt as the artifact was" if manifest is not None else "built"
    cpu = compiled.target.get("mcpu", "generic")
    description = (f"lepton-opt build for llvm ({cpu})" + (f", {precision}" if precision else "")
                   + f", {what}, with {len(marked)} value(s) as extra outputs")
    names = {n: n for n in marked if n in outputs}
    return _Candidate(description, {n: outputs[n] for n in names}, names, notes,
                      {o.name: outputs[o.name] for o in proto.graph.output if o.name in outputs})


def _select(proto: onnx.ModelProto, names: list[str], max_values: int) -> tuple[list[str], list[str]]:
    """At most ``max_values`` of ``names`` (graph order): graph outputs always, the rest evenly spaced."""
    if len(names) <= max_values:
        return names, []
    outputs = {o.name for o in proto.graph.output}
    keep = [n for n in names if n in outputs]
    others = [n for n in names if n not in outputs]
    room = max(max_values - len(keep), 0)
    if room:
        picks = {int(round(i)) for i in np.linspace(0, len(others) - 1, room)}
        keep += [others[i] for i in sorted(picks)]
    order = {n: i for i, n in enumerate(names)}
    keep.sort(key=order.__getitem__)
    return keep, [f"{len(keep)} of {len(names)} values marked as build outputs (evenly spaced in graph order, "
                  "graph outputs included); raise max_values (--max-values) to mark more"]


def _produced(proto: onnx.ModelProto) -> set[str]:
    return {name for node in proto.graph.node for name in node.output if name}


# ----------------------------------------------------------------------------------------
# Artifacts
# ----------------------------------------------------------------------------------------

def _load_artifact(artifact):
    from lepton_opt.api import load_compiled

    compiled = load_compiled(artifact)
    kind = compiled.manifest.get("target", {}).get("kind")
    if kind != "llvm":
        raise OptionError(f"{artifact}: a {kind} artifact cannot run here; debug a --target llvm build (or --compile)")
    return compiled


def _static_shapes(inputs: list[dict]) -> dict[str, list[int]]:
    return {spec["name"]: list(spec["shape"]) for spec in inputs
            if all(isinstance(d, int) for d in spec["shape"])}


def _check_artifact(built, reference, feeds, candidate, atol, rtol, sha256, notes: list[str]) -> bool:
    """Run the artifact itself: its outputs against the reference's and the rebuild's."""
    if built.manifest.get("source", {}).get("sha256") not in (None, sha256):
        notes.append("the model given is not the one the artifact was built from (its sha256 differs)")
    got = built.run(feeds)
    own = compare(reference, got, atol=atol, rtol=rtol)
    for line in own.lines():
        notes.append(f"the artifact itself: {line}")
    rebuilt = candidate.build_outputs
    if rebuilt:
        same = compare({k: v for k, v in rebuilt.items() if k in got}, got, atol=0.0, rtol=0.0)
        worst = max((o.max_abs for o in same.outputs), default=0.0)
        notes.append("the rebuild reproduces the artifact's outputs exactly" if same.ok else
                     f"the rebuild's outputs differ from the artifact's by up to {worst:.3g} (other outputs change "
                     "what is fused and how it is computed): the rows describe the rebuild")
    return own.ok


# ----------------------------------------------------------------------------------------
# Comparing
# ----------------------------------------------------------------------------------------

def _rows(values, reference: Mapping[str, np.ndarray], candidate: _Candidate, atol: float,
          rtol: float) -> list[DebugRow]:
    rows, errors = [], {}
    for name, (node, op_type, inputs, _elem) in values.items():
        if name not in candidate.outputs or name not in reference:
            continue
        ref, got = np.asarray(reference[name]), np.asarray(candidate.outputs[name])
        o = compare({name: ref}, {name: got}, atol=atol, rtol=rtol).outputs[0]
        error = _scaled_error(ref, got, o.max_abs, o.nonfinite_mismatch)
        before = max((errors[i] for i in inputs if i in errors), default=0.0)
        added = 0.0 if not math.isfinite(before) else error - before
        errors[name] = error
        rows.append(DebugRow(name, node, op_type, list(ref.shape), o.max_abs, o.max_rel, o.cosine,
                             o.nonfinite_mismatch, o.ok, error, added, candidate.names[name]))
    return rows


def _scaled_error(ref: np.ndarray, got: np.ndarray, max_abs: float, nonfinite: int) -> float:
    if nonfinite or ref.shape != got.shape or not math.isfinite(max_abs):
        return math.inf
    r = ref.astype(np.float64)
    peak = float(np.abs(r[np.isfinite(r)]).max(initial=0.0))
    if peak > 0:
        return max_abs / peak
    return 0.0 if max_abs == 0 else math.inf


def _describe(row: DebugRow) -> str:
    if row.nonfinite:
        what = f"{row.nonfinite} element(s) non-finite where the reference is finite (or the reverse)"
    elif not math.isfinite(row.max_abs):
        what = "a shape that differs from the reference's"
    else:
        what = f"max abs error {row.max_abs:.3g}, max rel error {row.max_rel:.3g}, cosine {row.cosine:.6f}"
    return f"node {row.node!r} ({row.op_type}), output {row.value!r}: {what}"


def _verdict(rows, first, most, precision, atol, rtol, artifact_ok) -> str:
    if first is None:
        text = f"no divergence: all {len(rows)} compared values within atol={atol:g}, rtol={rtol:g}"
        if not artifact_ok:
            text += ", but the artifact's own outputs are not (see the notes)"
    else:
        text = f"first divergence at {_describe(first)} (atol={atol:g}, rtol={rtol:g})"
    if precision == "int8" and most is not None:
        added = "non-finite" if not math.isfinite(most.added) else f"+{most.added:.3g}"
        text += (f"; most error added by node {most.node!r} ({most.op_type}): {added} of its output's peak "
                 f"(error {most.error:.3g} at {most.value!r})")
    return text
