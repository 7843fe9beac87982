"""Pass infrastructure: ``Pass``, ``PassResult``, a fixed-point ``PassManager`` and its records.

Built on :mod:`onnx_ir.passes`: a :class:`Pass` is an ``onnx_ir`` in-place pass with a registry
name, and its :class:`PassResult` is ``onnx_ir``'s ``PassResult(model, modified)`` plus the
number of rewrites it applied. Library passes (``onnx_ir.passes.common``, onnxscript) are
wrapped, not rewritten: see :mod:`lepton_opt.passes.simplify`.

The :class:`PassManager` runs its passes in order, again and again, until one whole round
changes nothing (or ``max_iterations`` rounds ran). Every pass run is recorded: rewrites, node
count and op histogram before and after, wall time. With a :class:`Verifier`, onnxruntime runs
the model on seeded inputs before the first pass and after every pass that changed it; the
first pass that moves an output beyond tolerance raises :class:`VerificationError` naming it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import onnx
import onnx_ir as ir

from lepton_opt.evaluation.accuracy import compare, ort_session, random_feeds
from lepton_opt.errors import LeptonError, VerificationError, first_line

DEFAULT_MAX_ITERATIONS = 8


@dataclasses.dataclass
class PassResult(ir.passes.PassResult):
    """``onnx_ir``'s ``PassResult(model, modified)`` plus how many rewrites the pass applied."""

    rewrites: int = 0


class Pass(ir.passes.InPlacePass):
    """An in-place pass known by ``name`` (its key in the registry and in reports)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __str__(self) -> str:
        return self.name


def op_histogram(model: ir.Model) -> collections.Counter:
    """Node count per op type over the graph and its subgraphs (``domain.Op`` outside ai.onnx)."""
    return collections.Counter(
        (f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
    )


class OpCounts:
    """Node counts derived from ``ops_before`` / ``ops_after`` op histograms."""

    ops_before: dict[str, int]
    ops_after: dict[str, int]

    @property
    def nodes_before(self) -> int:
        return sum(self.ops_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.ops_after.values())


@dataclasses.dataclass
class PassRecord(OpCounts):
    """One run of one pass."""

    name: str
    iteration: int  # 1-based round of the fixed-point loop
    rewrites: int
    modified: bool
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    seconds: float

    @property
    def op_delta(self) -> dict[str, int]:
        return _delta(self.ops_before, self.ops_after)


@dataclasses.dataclass
class PassSummary:
    """Every run of one pass in a pipeline, added up (one row of the per-pass table)."""

    name: str
    runs: int
    rewrites: int
    nodes_before: int  # before its first run
    nodes_after: int  # after its last run
    node_delta: int  # what this pass itself added (+) or removed (-), summed over its runs
    op_delta: dict[str, int]  # the same per op type, zero entries dropped
    seconds: float


@dataclasses.dataclass(frozen=True)
class RolledBack:
    """A pass whose run was undone: it raised, or left a model that is not valid ONNX."""

    name: str
    iteration: int
    reason: str

    def __str__(self) -> str:
        return f"pass {self.name!r} was rolled back and skipped from then on: {self.reason}"


@dataclasses.dataclass
class PipelineResult(PassResult):
    """What a :class:`PassManager` run did: every pass run, in order, and whether it converged."""

    records: list[PassRecord] = dataclasses.field(default_factory=list)
    iterations: int = 0
    converged: bool = True
    rolled_back: list[RolledBack] = dataclasses.field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [str(r) for r in self.rolled_back]

    def summary(self) -> list[PassSummary]:
        rows: dict[str, PassSummary] = {}
        for r in self.records:
            row = rows.get(r.name)
            if row is None:
                rows[r.name] = PassSummary(r.name, 1, r.rewrites, r.nodes_before, r.nodes_after,
                                           r.nodes_after - r.nodes_before, r.op_delta, r.seconds)
                continue
            row.runs += 1
            row.rewrites += r.rewrites
            row.nodes_after = r.nodes_after
            row.node_delta += r.nodes_after - r.nodes_before
            for op, d in r.op_delta.items():
                row.op_delta[op] = row.op_delta.get(op, 0) + d
            row.op_delta = {op: d for op, d in row.op_delta.items() if d}
            row.seconds += r.seconds
        return list(rows.values())


def _delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    ops = sorted(set(before) | set(after))
    return {op: after.get(op, 0) - before.get(op, 0) for op in ops if after.get(op, 0) != before.get(op, 0)}


class Verifier:
    """onnxruntime (graph optimizations off) on seeded inputs, compared with the input model.

    Built from the model *before* any pass: its outputs are the reference. :meth:`check` runs
    the model again and raises :class:`VerificationError` naming the pass just applied when an
    output moved beyond ``atol`` / ``rtol`` or onnxruntime can no longer run the model.
    """

    def __init__(self, model: ir.Model, *, seed: int = 0, atol: float = 1e-4, rtol: float = 1e-4,
                 dims: Mapping[str, int] | None = None):
        self.atol, self.rtol = atol, rtol
        self.feeds = random_feeds(input_specs(model), seed=seed, dims=dims)
        try:
            self.reference = run_onnxruntime(model, self.feeds)
        except Exception as e:  # noqa: BLE001 - any onnxruntime failure means the same to the user
            raise LeptonError(f"verify-each needs onnxruntime to run the input model, and it cannot: "
                              f"{first_line(e, with_type=True, limit=None)}") from None

    def check(self, model: ir.Model, pass_name: str) -> None:
        try:
            outputs = run_onnxruntime(model, self.feeds)
        except Exception as e:  # noqa: BLE001
            raise VerificationError(f"pass {pass_name!r} broke the model: onnxruntime cannot run it "
                                    f"after the pass ({first_line(e, with_type=True, limit=None)})") from None
        report = compare(self.reference, outputs, atol=self.atol, rtol=self.rtol)
        bad = [o for o in report.outputs if not o.ok]
        if bad:
            o = bad[0]
            raise VerificationError(
                f"pass {pass_name!r} changed output {o.name!r} beyond atol={self.atol:g}, rtol={self.rtol:g} "
                f"(max abs error {o.max_abs:.3g}, cosine {o.cosine:.6f}) on seeded inputs")


def input_specs(model: ir.Model) -> list[dict]:
    """The model's real inputs as ``{"name", "shape", "dtype"}`` specs for ``random_feeds``."""
    specs = []
    for v in model.graph.inputs:
        if v.is_initializer():
            continue
        shape = [] if v.shape is None else [
            d if isinstance(d, int) else (d.value or "?") for d in v.shape]
        dtype = "float32" if v.dtype is None else (
            "bfloat16" if v.dtype == ir.DataType.BFLOAT16 else str(np.dtype(v.dtype.numpy())))
        specs.append({"name": v.name, "shape": shape, "dtype": dtype})
    return specs


# Protobuf cannot serialize a model of 2 GB or more; past this, go through a file.
_IN_MEMORY_LIMIT = 1 << 30


def run_onnxruntime(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All outputs of ``model`` (the IR, not a copy) under onnxruntime with optimizations off."""
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if weights < _IN_MEMORY_LIMIT:
        session = ort_session(ir.serde.serialize_model(model))
        return _run(session, feeds)
    with tempfile.TemporaryDirectory(prefix="lepton-verify-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        ir.save(model, path, external_data="model.onnx.data")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return _run(ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]), feeds)


def _run(session, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))


@contextlib.contextmanager
def _quiet_library_loggers():
    """The wrapped library passes log routine refusals as warnings (an initializer that is also a
    graph input, an op the folder skips); without logging configured those would reach stderr."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.ERROR))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def restore_input_names(model: ir.Model, names: Sequence[str]) -> None:
    """Give graph inputs back the names users feed them by.

    onnxscript's optimizer renames an input that is also a graph output (``x`` -> ``x_orig``,
    plus ``Identity(x_orig) -> x``) so that it can keep the output's name. The model's interface
    is its input names: undo that, making the input itself the graph output again.
    """
    graph = model.graph
    for value, name in zip(graph.inputs, names):
        if value.name == name:
            continue
        for use in list(value.uses()):
            node = use.node
            if (node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.graph is graph
                    and node.outputs[0].name == name and node.outputs[0].is_graph_output()
                    and not node.outputs[0].uses()):
                output = node.outputs[0]
                for i, out in enumerate(graph.outputs):
                    if out is output:
                        graph.outputs[i] = value
                graph.remove(node, safe=True)
        value.name = name


class PassManager(ir.passes.InPlacePass):
    """Runs ``passes`` in order, round after round, until a round changes nothing.

    ``max_iterations`` caps the rounds (a pair of passes that undo each other would otherwise
    loop forever); ``PipelineResult.converged`` says whether the last round was quiet.
    ``verifier`` (see :class:`Verifier`) checks the model after every pass that changed it.
    """

    def __init__(self, passes: Sequence[ir.passes.PassBase], *, max_iterations: int = DEFAULT_MAX_ITERATIONS,
                 verifier: Verifier | None = None):
        super().__init__()
        if max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")
        self.passes = list(passes)
        self.max_iterations = max_iterations
        self.verifier = verifier

    def call(self, model: ir.Model) -> PipelineResult:
        records: list[PassRecord] = []
        modified = False
        converged = not self.passes
        input_names = [v.name for v in model.graph.inputs]
        iteration = 0
        checker = ModelChecker(model)
        rolled_back: list[RolledBack] = []
        disabled: set[int] = set()
        while self.passes and iteration < self.max_iterations and not converged:
            iteration += 1
            changed = False
            for index, pass_ in enumerate(self.passes):
                if index in disabled:
                    continue
                name = getattr(pass_, "name", type(pass_).__name__)
                before = dict(op_histogram(model))
                snapshot = model.clone()
                start = time.perf_counter()
                try:
                    with _quiet_library_loggers():
                        result = pass_(model)
                    if result.model is not model:
                        raise ir.passes.PassError("it returned a new model; passes here work in place")
                    problem = checker.problem(model) if result.modified or dict(op_histogram(model)) != before \
                        else None
                except Exception as e:  # noqa: BLE001 - any failure of a pass is rolled back and reported
                    problem = f"it raised {first_line(e, with_type=True, limit=None)}"
                seconds = time.perf_counter() - start
                if problem is not None:
                    _restore(model, snapshot)
                    disabled.add(index)
                    rolled_back.append(RolledBack(name, iteration, problem))
                    records.append(PassRecord(name, iteration, 0, False, before, before, seconds))
                    continue
                rewrites = getattr(result, "rewrites", int(result.modified))
                records.append(PassRecord(name, iteration, rewrites, result.modified, before,
                                          dict(op_histogram(model)), seconds))
                if result.modified:
                    changed = modified = True
                    restore_input_names(model, input_names)
                if self.verifier is not None and (result.modified or records[-1].op_delta):
                    # also when the ops changed under a pass that claims it did nothing
                    self.verifier.check(model, name)
            converged = not changed
        return PipelineResult(model, modified, sum(r.rewrites for r in records), records, iteration, converged,
                              rolled_back)


def _restore(model: ir.Model, snapshot: ir.Model) -> None:
    """Make ``model`` (the caller's object: passes work in place) what ``snapshot`` was."""
    model.graph = snapshot.graph
    model.ir_version = snapshot.ir_version
    model.functions.clear()
    model.functions.update(snapshot.functions)


class ModelChecker:
    """Whether a pass left a valid model: ``onnx.checker`` with strict shape inference at the
    model's opset (``full_check``), on a structural copy whose large weights are graph inputs (the
    checks need their types and shapes, not their bytes: no 2 GB protobuf, no copy of the weights)
    and whose computed values carry no shapes (inference derives them from the inputs).

    A model that already fails the full check when the pipeline starts (some exporters write
    value_info that strict inference rejects) is held to the plain checker instead, and one that
    fails even that only to "the pass did not raise": a pass is judged by what it made worse."""

    def __init__(self, model: ir.Model):
        # Strict inference also walks the branch an If does not take, which with fixed input
        # shapes may be contradictory and yet never run (silero VAD squeezes a dim in the branch
        # taken only when that dim is 1): models with subgraphs get the plain check.
        has_subgraphs = any(True for graph in model.graphs() if graph is not model.graph)
        self.level = "plain" if has_subgraphs else "full"
        if self._failure(model, self.level) is not None:
            self.level = "plain" if self._failure(model, "plain") is None else None

    def problem(self, model: ir.Model) -> str | None:
        """None when ``model`` passes the check, else why not (one line)."""
        if self.level is None:
            return None
        failure = self._failure(model, self.level)
        return None if failure is None else f"it left an invalid model ({failure})"

    @staticmethod
    def _failure(model: ir.Model, level: str) -> str | None:
        try:
            clone = model.clone()
            graph = clone.graph
            for name, value in list(graph.initializers.items()):
                tensor = value.const_value
                if tensor is None or value.is_graph_input() or tensor.size <= _CHECK_KEEP_ELEMENTS:
                    continue
                graph.initializers.pop(name)
                graph.inputs.append(value)
            # Shapes recorded on computed values (exporters' value_info, passes' inference) may be
            # stale or wrong without the model being so: inference recomputes them from the inputs.
            for node in ir.traversal.RecursiveGraphIterator(graph):
                for value in node.outputs:
                    if not value.is_graph_output():
                        value.shape = None
                    elif value.shape is not None:  # the checker wants a shape on graph outputs: the rank
                        value.shape = ir.Shape([ir.SymbolicDim(None)] * len(value.shape))
            proto = ir.serde.serialize_model(clone)
            if any(not o.type.tensor_type.HasField("shape") for o in proto.graph.output if o.type.HasField("tensor_type")):
                # The checker wants a shape on every graph output: take the inferred one.
                inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(proto).graph.output}
                for output in proto.graph.output:
                    if output.name in inferred:
                        output.CopyFrom(inferred[output.name])
            onnx.checker.check_model(proto, full_check=level == "full")
        except Exception as e:  # noqa: BLE001 - checker, shape-inference and serializer errors alike
            return first_line(e, with_type=True, limit=None)
        return None


# Initializers up to this many elements stay data for the check: shape inference reads small
# constants (Reshape targets, axes); the weights it needs only the types and shapes of.
_CHECK_KEEP_ELEMENTS = 1024
