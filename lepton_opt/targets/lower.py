"""Lower an onnx-ir model to a TVM Relax ``IRModule``.

One converter per ONNX op, looked up in :data:`lepton_opt.targets.ops.CONVERTERS` by op type.
A converter is a plain function ``fn(ctx, *inputs, **attributes)``: ``inputs`` are Relax
expressions (``None`` for an omitted optional input) and the keyword arguments are the ONNX
attributes, with the ONNX spec defaults written in the signature (tinygrad's ``onnx.py`` style).
It returns one Relax expression, or a list of them for a multi-output op.

Values known at compile time are tracked beside the Relax program (:class:`Known`): constants
and, more importantly, *shape tensors* whose elements may be symbolic (a dynamic batch dim is a
``tir.Var``). ``Shape -> Gather -> Concat -> Reshape`` chains that torch exports for dynamic
axes are evaluated here, so ``Reshape`` receives a symbolic shape instead of a data-dependent
tensor, and a static model carries no shape arithmetic into the compiled code at all.

Ops without a converter of our own may fall back to TVM's reference ONNX importer, one op at a
time (:mod:`lepton_opt.targets.ops.reference`). Whatever fails, the user gets one
:class:`~lepton_opt.errors.UnsupportedModelError` listing every op and node that could not be
lowered, never a TVM traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import tvm
from tvm import relax
from tvm.ir import expr as ir_expr
from tvm import tirx as tir
from tvm.ir.prim import expr as prim

from lepton_opt.errors import ModelLoadError, ShapeError, UnsupportedModelError, first_line

# ONNX element types the lowering accepts, as TVM dtype strings.
DTYPES: dict[ir.DataType, str] = {
    ir.DataType.FLOAT: "float32",
    ir.DataType.FLOAT16: "float16",
    ir.DataType.BFLOAT16: "bfloat16",
    ir.DataType.DOUBLE: "float64",
    ir.DataType.INT8: "int8",
    ir.DataType.INT16: "int16",
    ir.DataType.INT32: "int32",
    ir.DataType.INT64: "int64",
    ir.DataType.UINT8: "uint8",
    ir.DataType.UINT16: "uint16",
    ir.DataType.UINT32: "uint32",
    ir.DataType.UINT64: "uint64",
    ir.DataType.BOOL: "bool",
}

# A known value larger than this is never evaluated in Python (it stays a Relax constant).
KNOWN_EVAL_LIMIT = 1 << 16


class LoweringError(Exception):
    """Raised by a converter for a node it cannot lower; collected and reported together."""


@dataclasses.dataclass(frozen=True)
class SymbolOrigin:
    """Where a symbolic dimension comes from, for error messages."""

    input_name: str
    axis: int
    label: str  # the dim_param, or "?" for an anonymous dimension


class Known:
    """A value whose contents are known at compile time.

    ``array`` is a numpy array of a numeric dtype, or of ``object`` dtype holding Python ints
    and ``prim.Expr`` for symbolic shape arithmetic.
    """

    __slots__ = ("array", "dtype")

    def __init__(self, array: np.ndarray, dtype: str):
        self.array = array
        self.dtype = dtype

    @property
    def is_symbolic(self) -> bool:
        return self.array.dtype == object and any(not isinstance(x, int) for x in self.array.flat)

    def numeric(self) -> np.ndarray:
        if self.array.dtype != object:
            return self.array
        return np.array([int(x) for x in self.array.flat], dtype=self.dtype).reshape(self.array.shape)


@dataclasses.dataclass
class ConvertContext:
    """What a converter sees besides its inputs: the block builder, opset and the node."""

    lowerer: Lowerer
    node: ir.Node
    opset: int
    known_inputs: list[Known | None]

    @property
    def bb(self) -> relax.BlockBuilder:
        return self.lowerer.bb

    def emit(self, expr: relax.Expr, name: str = "") -> relax.Expr:
        if isinstance(expr, (relax.Var, relax.ShapeExpr, ir_expr.Constant)):
            return expr
        return self.lowerer.bb.emit(expr, name_hint=name or self.lowerer.expr_name(self.node))

    def known(self, index: int) -> Known | None:
        return self.known_inputs[index] if index < len(self.known_inputs) else None

    def static(self, index: int, what: str) -> np.ndarray | None:
        """The numeric value of input ``index`` (``None`` if the input is omitted).

        Raises a user-facing error when the value is data-dependent or still symbolic.
        """
        if index >= len(self.node.inputs) or self.node.inputs[index] is None:
            return None
        known = self.known(index)
        if known is None:
            raise LoweringError(f"{what} (input {index}) must be a constant; it is computed at run time")
        if known.is_symbolic:
            raise self.lowerer.symbolic_error(known.array, what)
        return known.numeric()

    def shape_of(self, expr: relax.Expr) -> list[int | prim.Expr]:
        return shape_of(expr)

    def sym_shape(self, index: int, what: str) -> list[int | prim.Expr] | None:
        """Input ``index`` as a list of (possibly symbolic) dims, for Reshape/Expand-like ops."""
        if index >= len(self.node.inputs) or self.node.inputs[index] is None:
            return None
        known = self.known(index)
        if known is None:
            raise LoweringError(f"{what} (input {index}) must be computable at compile time")
        return known.array.reshape(-1).tolist()


def shape_of(expr: relax.Expr) -> list[int | prim.Expr]:
    """The shape of a tensor expression: ints where static, ``prim.Expr`` where symbolic."""
    sinfo = expr.ty
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        raise LoweringError("a tensor of unknown rank cannot be lowered; give static input shapes")
    return [int(d) if isinstance(d, tir.IntImm) else d for d in sinfo.shape.values]


def dtype_of(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


Converter = Callable[..., Any]


def mutator_pass(name: str, make_mutator: Callable[[tvm.IRModule], relax.PyExprMutator]) -> tvm.transform.Pass:
    """A module pass running ``make_mutator(mod)`` (a ``relax.PyExprMutator``) over every Relax
    function of the module; the PrimFuncs the mutator emits (``call_te``) join the module."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mutator = make_mutator(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gv, mutator.visit_expr(func))
        return mutator.builder_.get()

    return _pass


@dataclasses.dataclass
class LoweredModule:
    mod: tvm.IRModule
    input_names: list[str]
    output_names: list[str]
    symbols: dict[str, SymbolOrigin]
    warnings: list[str] = dataclasses.field(default_factory=list)
    # Relax binding name -> the ONNX value (or op) name it was made from (kernel profiles)
    value_names: dict[str, str] = dataclasses.field(default_factory=dict)


class Lowerer:
    """Walks an onnx-ir graph in topological order and emits Relax bindings."""

    def __init__(self, model: ir.Model, converters: dict[str, Converter], source: str = "model",
                 partial: bool = False, shape_errors_fail_nodes: bool = False, target_kind: str = "llvm"):
        self.model = model
        # partial: every top-level node that cannot be lowered (no converter, a converter error,
        # a shape the converter needs fixed) is collected in ``failed_nodes`` with its reason, and
        # the UnsupportedModelError raised at the end carries them (``error.failed_nodes``); used
        # to partition a model between compiled code and onnxruntime (targets/partition.py).
        self.partial = partial
        self.target_kind = target_kind  # "llvm" or "cuda": converters may emit target-specific kernels
        # With ``partial``: a ShapeError (a dim that must be fixed) fails its node instead of the
        # lowering; for segments behind onnxruntime ones, whose dims are known only at run time.
        self.shape_errors_fail_nodes = partial and shape_errors_fail_nodes
        self.failed_nodes: list[tuple[ir.Node, str]] = []
        self.graph = model.graph
        self.converters = converters
        self.source = source
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        self.bb = relax.BlockBuilder()
        self.exprs: dict[ir.Value, relax.Expr] = {}
        self.known: dict[ir.Value, Known] = {}
        self.symbols: dict[str, SymbolOrigin] = {}
        self._sym_vars: dict[str, tir.Var] = {}
        self._names: dict[str, str] = {}  # binding name -> the ONNX name it was made from
        self.warnings: list[str] = []  # what the lowering decided that the user must hear of

    # ---------------------------------------------------------------- entry point
    def lower(self) -> LoweredModule:
        check_input_types(self.graph, self.opset, self.source)
        if not self.partial:
            self.check_supported()
        params = [self._input_var(v) for v in self.graph.inputs if not v.is_initializer()]
        for value in self.graph.initializers.values():
            self._register_initializer(value)
        failures: list[str] = []
        error: Exception | None = None
        with self.bb.function("main", params=params):
            with self.bb.dataflow():
                try:
                    self.lower_nodes(self.graph, failures)
                    if failures:
                        raise UnsupportedModelError(self._failure_message(failures))
                    outputs = [self.expr(v, f"graph output {v.name!r}") for v in self.graph.outputs]
                except Exception as e:  # noqa: BLE001 - re-raised below, once the builder is closed
                    # Close the function cleanly so TVM does not warn about open blocks on stderr.
                    error, outputs = e, []
                result = self.bb.emit_output(relax.Tuple(outputs))
            self.bb.emit_func_output(result)
        if error is not None:
            if self.failed_nodes:
                error.failed_nodes = list(self.failed_nodes)
            raise error
        mod = self.bb.get()
        mod = relax.transform.DeadCodeElimination(["main"])(mod)
        return LoweredModule(
            mod,
            [v.name for v in self.graph.inputs if not v.is_initializer()],
            [v.name for v in self.graph.outputs],
            dict(self.symbols),
            list(self.warnings),
            dict(self._names),
        )

    # ---------------------------------------------------------------- checks
    def check_supported(self) -> None:
        """Raise one error naming every node whose op has no converter (subgraphs included)."""
        missing: dict[str, list[str]] = {}
        for node in ir.traversal.RecursiveGraphIterator(self.graph):
            key = op_key(node)
            if key not in self.converters:
                missing.setdefault(key, []).append(node.name or f"<{node.op_type} node>")
        if missing:
            parts = [f"{op} (nodes: {', '.join(_abbrev(names))})" for op, names in sorted(missing.items())]
            raise UnsupportedModelError(
                f"{self.source}: {len(missing)} unsupported op type(s): " + "; ".join(parts)
                + ". Replace them when exporting, or report them to lepton-opt"
            )

    def _failure_message(self, failures: list[str]) -> str:
        return (
            f"{self.source}: {len(failures)} node(s) could not be lowered: " + "; ".join(failures[:20])
            + (f"; and {len(failures) - 20} more" if len(failures) > 20 else "")
        )

    # ---------------------------------------------------------------- values
    def _input_var(self, value: ir.Value) -> relax.Var:
        vtype = value.type
        if not isinstance(vtype, ir.TensorType):
            raise UnsupportedModelError(
                f"{self.source}: input {value.name!r} is a {vtype}; only tensor inputs can be compiled"
            )
        dtype = _tvm_dtype(value.dtype, f"input {value.name!r}", self.source)
        if value.shape is None:
            raise ShapeError(
                f"{self.source}: input {value.name!r} has unknown rank; "
                f"fix it with --input-shape {value.name}:DIMS"
            )
        dims: list[int | tir.Var] = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                dims.append(dim)
                continue
            label = dim.value if isinstance(dim, ir.SymbolicDim) and dim.value else None
            key = label or f"{value.name}_dim{axis}"
            if key not in self._sym_vars:
                var = tir.Var(_identifier(key), "int64")
                self._sym_vars[key] = var
                self.symbols[var.name] = SymbolOrigin(value.name, axis, label or "?")
            dims.append(self._sym_vars[key])
        var = relax.Var(self.unique_name(value.name, "input"), relax.TensorType(dims, dtype))
        self.exprs[value] = var
        return var

    def _register_initializer(self, value: ir.Value) -> None:
        tensor = value.const_value
        if tensor is None:
            return  # an initializer that is also a graph input without data: a runtime input
        try:
            array = tensor.numpy()
        except Exception as e:  # noqa: BLE001 - data that does not fit its type or shape
            first = first_line(e, limit=None)
            raise ModelLoadError(f"{self.source}: initializer {value.name!r} holds data that does not fit its "
                                 f"type {tensor.dtype} and shape {tensor.shape} ({first}); the model is malformed: "
                                 "re-export it") from None
        dtype = _tvm_dtype(value.dtype, f"initializer {value.name!r}", self.source)
        if array.size <= KNOWN_EVAL_LIMIT:
            self.known[value] = Known(array, dtype)
        else:
            self.exprs[value] = relax.const(array, dtype)

    def expr(self, value: ir.Value, what: str = "value") -> relax.Expr:
        """The Relax expression of ``value``, materializing known values on first use."""
        if value in self.exprs:
            return self.exprs[value]
        known = self.known.get(value)
        if known is None:
            raise LoweringError(f"{what} {value.name!r} has no lowered definition")
        if known.is_symbolic:
            if known.array.ndim > 1:
                raise self.symbolic_error(known.array, f"{what} {value.name!r}")
            shape = relax.ShapeExpr([x if isinstance(x, prim.Expr) else tir.IntImm("int64", x)
                                     for x in known.array.reshape(-1).tolist()])
            expr = self.bb.emit(relax.op.shape_to_tensor(shape))
            if known.array.ndim == 0:  # a scalar: a size computed from a shape (numel() == 0 checks)
                expr = self.bb.emit(relax.op.reshape(expr, []))
            if known.dtype != "int64":
                expr = self.bb.emit(relax.op.astype(expr, known.dtype))
        else:
            expr = relax.const(known.numeric(), known.dtype)
        self.exprs[value] = expr
        return expr

    def symbolic_error(self, array: np.ndarray, what: str) -> ShapeError:
        names = _free_vars(array)
        origins = [self.symbols[n] for n in names if n in self.symbols]
        if not origins:
            return ShapeError(f"{self.source}: {what} depends on a size computed at run time (the output of a "
                              "data-dependent op such as NonZero), which this use cannot take")
        flags = " ".join(f"--input-shape {o.input_name}:DIMS" for o in _unique_inputs(origins))
        dims = ", ".join(f"input {o.input_name!r} dim {o.axis} ({o.label})" for o in origins)
        return ShapeError(
            f"{self.source}: {what} needs a fixed value for {dims}; fix it with {flags} "
            "(or input_shapes={...} in the Python API)"
        )

    # ---------------------------------------------------------------- nodes
    def lower_nodes(self, graph: ir.Graph, failures: list[str]) -> None:
        poisoned: set[ir.Value] = set()
        top = graph is self.graph
        for node in graph:
            if any(v is not None and v in poisoned for v in node.inputs):
                poisoned.update(node.outputs)  # a producer already failed: report the root cause only
                continue
            try:
                self.lower_node(node)
            except ShapeError as e:
                if not (self.shape_errors_fail_nodes and top):
                    raise
                failures.append(str(e))
                self.failed_nodes.append((node, str(e)))
                poisoned.update(node.outputs)
            except UnsupportedModelError as e:
                failures.append(str(e))
                if top:
                    self.failed_nodes.append((node, str(e)))
                poisoned.update(node.outputs)
            except Exception as e:  # a converter bug or an unsupported attribute combination
                if isinstance(e, KeyError) and op_key(node) not in self.converters:
                    reason = f"{op_key(node)} node {node.name or '?'!r}: no lowering for {op_key(node)}"
                else:
                    reason = f"{node.op_type} node {node.name or '?'!r}: {first_line(e, with_type=not isinstance(e, LoweringError))}"
                failures.append(reason)
                if top:
                    self.failed_nodes.append((node, reason))
                poisoned.update(node.outputs)

    def lower_subgraph(self, graph: ir.Graph) -> list[relax.Expr | Known]:
        """Lower a nested graph (an ``If`` branch) inline into the current block.

        Outer-scope values are visible as they are: onnx-ir links a subgraph's references to the
        outer ``ir.Value``. Returns the graph's outputs; those known at compile time stay ``Known``.
        """
        for value in graph.initializers.values():
            self._register_initializer(value)
        failures: list[str] = []
        self.lower_nodes(graph, failures)
        if failures:
            raise UnsupportedModelError("; ".join(failures))
        return [self.known[v] if v not in self.exprs and v in self.known else self.expr(v, "subgraph output")
                for v in graph.outputs]

    def lower_node(self, node: ir.Node) -> None:
        from lepton_opt.targets.ops.shape_eval import evaluate_known

        if node.outputs and all(v in self.exprs for v in node.outputs):
            return  # computed by its producer's converter (a requantization fused into a kernel)
        known_inputs = [None if v is None else self.known.get(v) for v in node.inputs]
        folded = evaluate_known(node, known_inputs, self)
        if folded is not None:
            for value, known in zip(node.outputs, folded):
                self.known[value] = known
            return
        converter = self.converters[op_key(node)]
        ctx = ConvertContext(self, node, self.opset, known_inputs)
        inputs = [None if v is None or (not v.name and v.producer() is None and not v.is_graph_input()
                                        and v.const_value is None)
                  else self.expr(v, f"input of {node.op_type} node {node.name!r}") for v in node.inputs]
        attrs = {name: _attr_value(attr) for name, attr in node.attributes.items()}
        try:
            result = call_converter(converter, ctx, inputs, attrs)
        except TypeError as e:
            if "unexpected keyword" in str(e):
                raise LoweringError(f"unsupported attribute: {e}") from e
            raise
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        for i, value in enumerate(node.outputs):
            if not value.name or i >= len(results) or results[i] is None:
                if value.name and value.uses() or (value.name and value.is_graph_output()):
                    if i >= len(results) or results[i] is None:
                        raise LoweringError(f"output {i} ({value.name!r}) is not supported")
                continue
            out = results[i]
            if isinstance(out, Known):
                self.known[value] = out
                continue
            self.exprs[value] = ctx.emit(out, self.unique_name(value.name, "v"))

    # ---------------------------------------------------------------- names
    def expr_name(self, node: ir.Node) -> str:
        return self.unique_name(node.outputs[0].name if node.outputs else node.op_type, "v")

    def unique_name(self, name: str, prefix: str) -> str:
        base = _identifier(name) or prefix
        candidate, i = base, 0
        while candidate in self._names:
            i += 1
            candidate = f"{base}_{i}"
        self._names[candidate] = name
        return candidate


def call_converter(converter: Converter, ctx: ConvertContext, inputs: Sequence[Any], attrs: dict) -> Any:
    sig = _signature(converter)
    positional = [p for p in sig.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]
    has_varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    if len(inputs) > len(positional) and not has_varargs:
        raise LoweringError(f"takes at most {len(positional)} inputs, got {len(inputs)}")
    return converter(ctx, *inputs, **attrs)


_SIGNATURES: dict[Converter, inspect.Signature] = {}


def _signature(fn: Converter) -> inspect.Signature:
    if fn not in _SIGNATURES:
        _SIGNATURES[fn] = inspect.signature(fn)
    return _SIGNATURES[fn]


def check_input_types(graph: ir.Graph, opset: int, source: str) -> None:
    """Every node of the ``ai.onnx`` domain reads inputs of types its ONNX schema allows, and
    the inputs that share a type variable have one type between them (onnxruntime refuses such
    a model as well). An ill-typed model (a Pow of uint8, a MatMul of float by uint8) would
    otherwise reach TVM, whose build fails on it with C++ warnings on stderr, if not worse."""
    import onnx

    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            continue  # no such op at this opset: check_supported / the converters say so
        constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        formals = schema.inputs
        bound: dict[str, tuple[str, str]] = {}
        for i, value in enumerate(node.inputs):
            if value is None or not formals:
                continue
            formal = formals[min(i, len(formals) - 1)]
            if i >= len(formals) and formal.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
                break  # more inputs than the schema has: not a type question
            if not isinstance(value.type, ir.TensorType) or value.dtype is None:
                continue
            got = f"tensor({value.dtype.name.lower()})"
            allowed = constraints.get(formal.type_str, {formal.type_str})
            if not any(a.startswith("tensor(") for a in allowed):
                continue  # a sequence or optional input: onnx-ir's type of it is not to be relied on here
            where = f"{source}: node {node.name or node.op_type!r} ({node.op_type})"
            if got not in allowed:
                raise ModelLoadError(f"{where} reads {value.name!r} of type {value.dtype.name} as its input "
                                     f"{formal.name!r}, which takes {', '.join(sorted(allowed))}; the model is "
                                     "malformed: re-export it")
            if formal.type_str in constraints and formal.is_homogeneous:
                first = bound.setdefault(formal.type_str, (got, value.name))
                if first[0] != got:
                    raise ModelLoadError(f"{where} reads {first[1]!r} of {first[0]} and {value.name!r} of {got}, "
                                         f"which must have one type ({formal.type_str}); the model is malformed: "
                                         "re-export it")


def op_key(node: ir.Node) -> str:
    domain = node.domain if node.domain not in ("", "ai.onnx") else ""
    return f"{domain}.{node.op_type}" if domain else node.op_type


def _attr_value(attr: ir.Attr) -> Any:
    value = attr.value
    if isinstance(value, ir.TensorProtocol):
        return value.numpy()
    if isinstance(value, (list, tuple)):
        return [v.numpy() if isinstance(v, ir.TensorProtocol) else v for v in value]
    return value


def _tvm_dtype(dtype: ir.DataType | None, what: str, source: str) -> str:
    if dtype not in DTYPES:
        raise UnsupportedModelError(f"{source}: {what} has element type {dtype}, which cannot be compiled")
    return DTYPES[dtype]


def _free_vars(array: np.ndarray) -> list[str]:
    names: set[str] = set()
    for x in array.flat:
        if isinstance(x, prim.Expr):
            names.update(v.name for v in tir.analysis.undefined_vars(x))
    return sorted(names)


def _unique_inputs(origins: list[SymbolOrigin]) -> list[SymbolOrigin]:
    seen: dict[str, SymbolOrigin] = {}
    for o in origins:
        seen.setdefault(o.input_name, o)
    return list(seen.values())


def _identifier(name: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return out if not out or out[0].isalpha() or out[0] == "_" else f"v_{out}"


def _abbrev(names: list[str], limit: int = 5) -> list[str]:
    return names[:limit] + ([f"+{len(names) - limit} more"] if len(names) > limit else [])
