"""Per-op fallback to TVM's reference ONNX importer.

For op types that have no converter of our own, the matching converter class of
``tvm.relax.frontend.onnx`` is called for that one node, on our block builder and with our
already-lowered inputs. Its failures are caught by the lowerer like any converter's and reported
together with the rest; they never reach the user as a TVM traceback.
"""

from __future__ import annotations

import onnx_ir as ir
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from lepton_opt.targets.lower import Converter


def _parse_attrs(node: ir.Node) -> dict:
    protos = [ir.serde.serialize_attribute(attr) for attr in node.attributes.values()]
    # The importer's attribute parser does not use its instance.
    return onnx_frontend.ONNXGraphImporter._parse_attr(None, protos)  # noqa: SLF001


def _reference(convert_class) -> Converter:
    def convert(ctx, *inputs, **_attributes):
        attrs = _parse_attrs(ctx.node)
        attrs["tvm_custom"] = {"name": ctx.node.name, "num_outputs": len(ctx.node.outputs)}
        fn = convert_class.get_converter(ctx.opset)
        result = fn(ctx.bb, onnx_frontend.onnx_input(list(inputs)), attrs, [{}, {}])
        if isinstance(result, relax.Tuple):
            return [_as_tensor(ctx, f) for f in result.fields]
        result = ctx.bb.normalize(result)
        if isinstance(result.ty, relax.TupleType):
            t = ctx.emit(result)
            return [_as_tensor(ctx, relax.TupleGetItem(t, i)) for i in range(len(result.ty.fields))]
        return _as_tensor(ctx, result)

    convert.__name__ = f"reference_{convert_class.__name__}"
    return convert


def _as_tensor(ctx, expr: relax.Expr) -> relax.Expr:
    expr = ctx.bb.normalize(expr)
    if isinstance(expr.ty, relax.ShapeType):
        return relax.op.shape_to_tensor(expr)
    return expr


def reference_converters(exclude: set[str]) -> dict[str, Converter]:
    """TVM's converter for every op type not in ``exclude`` (control flow and sequences skipped)."""
    skip = {"If", "Loop", "Scan"} | {op for op in onnx_frontend._get_convert_map() if "Sequence" in op or "Optional" in op}  # noqa: SLF001
    return {op: _reference(cls) for op, cls in onnx_frontend._get_convert_map().items()  # noqa: SLF001
            if op not in exclude and op not in skip}


def reference_for(op_type: str) -> Converter | None:
    """TVM's converter for one op type (for our converters' run-time-parameter fallbacks)."""
    cls = onnx_frontend._get_convert_map().get(op_type)  # noqa: SLF001
    return None if cls is None else _reference(cls)
