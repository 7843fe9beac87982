"""Model fuzzer: structure-aware mutations of valid ONNX models, run through the command line.

    .venv/bin/python benchmarks/fuzz.py --mutations 300 --seed 0            # a campaign
    .venv/bin/python benchmarks/fuzz.py --mutations 30 --seed 1 --quick     # what tests/test_fuzz.py runs

Starting models: the small models the tests build in code (``tests/models.py``),
``examples/mobilenet_tiny.onnx`` and ONNX's backend test models from the installed onnx package
(``onnx/backend/test/data/node/*/model.onnx`` where the wheel ships them; onnx 1.23's wheel
does not, so the same cases are generated from ``onnx.backend.test.case.node``, plus
``data/simple``). Hypothesis draws every choice: the starting model, the kind of mutation and
its details (which node, attribute, dim, dtype, bit...), from a seed, so that a campaign can be
repeated exactly; it runs in generate-only mode (no shrinking: every example is a separate
mutated model, and a bug keeps its model under ``--out``).

Mutation kinds: out-of-range attributes, wrong-rank/negative/zero/huge dims (declared and in
shape tensors), dtype swaps, missing and duplicated initializers, duplicated value names,
cycles, dangling inputs and outputs, empty graphs, NaN/inf weights, opset and IR version
changes, domain changes, op type and arity changes, truncated and bit-flipped bytes, and
external-data paths that escape the model's folder (``../../etc/passwd``, an absolute path, a
symlink) or point at nothing or past the end of a file.

Each mutated model is run through ``lepton-opt inspect``, ``optimize`` and ``compile`` in a
child process with a time limit and a memory limit (``RLIMIT_AS``). The children are forked
from this process, which has imported lepton-opt and TVM but started no threads (onnxruntime is
imported only in the children), so a command costs its own work, not the 2-3 s of imports;
every outcome that counts as a bug is run again in a fresh ``python -m lepton_opt.cli``
process before it is reported. Allowed outcomes:

* exit 0 -- after ``compile``, the artifact is run on seeded inputs and compared with
  onnxruntime on the mutated model (where onnxruntime loads and runs it); after ``optimize``,
  onnxruntime's outputs on the optimized model are compared with those on the mutated one;
* exit 2 with exactly one ``error:`` line on stderr (``warning:``/``note:`` lines may precede
  it) and no traceback.

A signal, a hang, any other exit code (an internal error exits 1), a traceback, a messy error
or a wrong result is a bug: it is listed in the summary and kept, with the mutated model, in
``OUT/bugs/``. ``OUT/summary.json`` holds the per-kind counts.

Two known differences are counted and listed apart, not as bugs of a run:

* ``nonfinite-mismatch``: outputs differ only where onnxruntime has NaN or inf. A compiled
  Relu is TVM's max(x, 0), which turns NaN into 0 where onnxruntime keeps NaN (NaN weights or
  an inf*0 reach a Relu); the fix belongs in the op lowerings (``targets/ops``). Weights near
  float32's largest value overflow in another order once a BatchNorm is folded into the Conv
  before it (-inf where onnxruntime has NaN).
* ``declared-shape-conflict``: the outputs differ, and onnxruntime computed an output of
  another shape than the model declares (it warns and goes on): the seeded inputs contradict
  the model. Where shape inference cannot tell (an Expand to a shape read at run time),
  lepton-opt builds the declared shape and returns it without checking the inputs against it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The children must not share cores with pools started for nothing: one TVM and BLAS thread.
for _name, _value in (("TVM_NUM_THREADS", "1"), ("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"),
                      ("COLUMNS", "200"), ("NO_COLOR", "1")):
    os.environ.setdefault(_name, _value)
os.environ.pop("LEPTON_OPT_DEBUG", None)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

COMMANDS = ("inspect", "optimize", "compile")
KINDS = ("attribute", "dims", "dtype", "initializer-missing", "initializer-duplicate", "name-duplicate", "cycle",
         "dangling", "empty-graph", "nan-inf-weights", "opset", "domain", "op-type", "truncate", "bit-flip",
         "external-data")
INTERESTING_INTS = (0, -1, -2, 1, 2, 3, 7, 99, -99, 2**31 - 1, -(2**31), 2**40, 2**62, -(2**62))
INTERESTING_FLOATS = (math.nan, math.inf, -math.inf, -1.0, 0.0, 1e30, -1e30, 1e-45, 3.4e38)
ELEM_TYPES = tuple(range(0, 24)) + (99,)
OPSETS = (0, 1, 5, 6, 7, 9, 10, 11, 13, 16, 18, 20, 21, 22, 23, 24, 25, 26, 99, -1, 2**40)
IR_VERSIONS = (0, 1, 2, 3, 4, 7, 8, 10, 11, 12, 13, 99)
DOMAINS = ("com.microsoft", "ai.onnx.ml", "ai.onnx", "org.example", "ai.onnx.preview.training", "")
OP_TYPES = ("Relu", "Softmax", "MatMul", "Conv", "Add", "Reshape", "Transpose", "If", "Loop", "Scan", "Frobnicate",
            "Gather", "Concat", "Resize", "TopK", "NonZero", "Where", "Cast", "LSTM", "Einsum")
EXTERNAL_LOCATIONS = ("../../etc/passwd", "/etc/passwd", "missing.bin", "sub/../../../x.bin", "weights.bin",
                      "weights.bin@past-end", "weights.bin@short", "link.bin", "", "dir.bin", "nul\x00.bin")


# ---------------------------------------------------------------------------- choices
class Choices:
    """Every decision a mutation makes: drawn from hypothesis (``data``) or a seeded ``random``."""

    def __init__(self, data=None, rng=None):
        self.data, self.rng = data, rng

    def integer(self, lo: int, hi: int) -> int:
        if self.data is not None:
            from hypothesis import strategies as st

            return self.data.draw(st.integers(lo, hi))
        return self.rng.randint(lo, hi)

    def pick(self, items: Sequence):
        return items[self.integer(0, len(items) - 1)]

    def boolean(self) -> bool:
        return bool(self.integer(0, 1))


# ---------------------------------------------------------------------------- starting models
@dataclasses.dataclass
class Seed:
    name: str
    model: onnx.ModelProto


def code_seeds(quick: bool = False) -> list[Seed]:
    from tests import models

    seeds = [Seed("tiny_mlp", models.tiny_mlp()), Seed("tiny_mlp_dynamic", models.tiny_mlp(batch="N"))]
    if not quick:
        seeds += [Seed("mobilenet_block_cnn", models.mobilenet_block_cnn()), Seed("resnet_cnn", models.resnet_cnn()),
                  Seed("transformer_layer", models.transformer_layer()),
                  Seed("mobilenet_tiny", onnx.load(ROOT / "examples" / "mobilenet_tiny.onnx"))]
    seeds.append(Seed("conv_relu_reshape", _conv_relu_reshape()))
    return seeds


def _conv_relu_reshape() -> onnx.ModelProto:
    """Conv -> Relu -> Reshape (a shape initializer) -> Softmax: a few attributes and a shape tensor."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1], group=1),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]),
             helper.make_node("Softmax", ["f"], ["y"], axis=-1)]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "shape")]
    graph = helper.make_graph(nodes, "conv_relu_reshape", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                         [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 144])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def backend_seeds(count: int, seed: int, quick: bool = False) -> list[Seed]:
    """``count`` of ONNX's backend node test models (seeded sample) and the ``data/simple`` ones;
    ``quick``: ``count`` of the ``data/simple`` ones only (files: nothing to generate)."""
    import random

    import onnx.backend.test

    data = Path(onnx.backend.test.__file__).parent / "data"
    simple = sorted((data / "simple").glob("*/model.onnx"))
    if quick:
        return [Seed(f"simple/{p.parent.name}", onnx.load(p))
                for p in sorted(random.Random(seed).sample(simple, min(count, len(simple))))]
    found = {p.parent.name: p for p in sorted((data / "node").glob("*/model.onnx"))}
    models: dict[str, Callable[[], onnx.ModelProto]] = {n: (lambda p=p: onnx.load(p)) for n, p in found.items()}
    if not models:
        from onnx.backend.test.case.node import collect_testcases

        with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            cases = collect_testcases(None)
        models = {c.name: (lambda c=c: c.model) for c in cases if c.model is not None}
    names = sorted(models)
    chosen = random.Random(seed).sample(names, min(count, len(names)))
    seeds = [Seed(f"node/{n}", models[n]()) for n in sorted(chosen)]
    seeds += [Seed(f"simple/{p.parent.name}", onnx.load(p)) for p in simple if count]
    return seeds


# ---------------------------------------------------------------------------- mutations
@dataclasses.dataclass
class Mutant:
    kind: str
    description: str
    model: onnx.ModelProto | None = None
    data: bytes | None = None  # the file's bytes, where they are not a serialized ``model``
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)  # beside the model
    links: dict[str, str] = dataclasses.field(default_factory=dict)  # symlink name -> target

    def write(self, folder: Path) -> Path:
        path = folder / "model.onnx"
        path.write_bytes(self.data if self.data is not None else self.model.SerializeToString())
        for name, content in self.files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)
        for name, target in self.links.items():
            os.symlink(target, folder / name)
        return path


def _attr_nodes(model):
    return [n for n in model.graph.node if n.attribute]


def _value_infos(model):
    return list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)


def _float_tensors(model):
    return [t for t in model.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE,
                                                                   TensorProto.FLOAT16)] + \
        [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
         if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE)]


def _int_initializers(model):
    return [t for t in model.graph.initializer if t.data_type in (TensorProto.INT64, TensorProto.INT32)]


def _applicable(model: onnx.ModelProto) -> list[str]:
    kinds = []
    for kind in KINDS:
        need = {"attribute": bool(model.graph.node), "dims": bool(_value_infos(model)) or bool(_int_initializers(model)),
                "dtype": bool(_value_infos(model)) or bool(model.graph.initializer),
                "initializer-missing": bool(model.graph.initializer),
                "initializer-duplicate": bool(model.graph.initializer),
                "name-duplicate": len(model.graph.node) + len(model.graph.input) >= 1,
                "cycle": bool(model.graph.node) and any(n.input for n in model.graph.node),
                "dangling": bool(model.graph.node), "nan-inf-weights": bool(_float_tensors(model)),
                "op-type": bool(model.graph.node), "domain": bool(model.graph.node),
                "external-data": bool(model.graph.initializer) or bool(_float_tensors(model))}.get(kind, True)
        if need:
            kinds.append(kind)
    return kinds


def mutate(seed: Seed, kind: str, c: Choices) -> Mutant:
    model = onnx.ModelProto()
    model.CopyFrom(seed.model)
    mutant = MUTATORS[kind](model, c)
    mutant.kind = kind
    return mutant


def m_attribute(model, c: Choices) -> Mutant:
    nodes = _attr_nodes(model)
    if not nodes or c.integer(0, 9) == 0:
        node = c.pick(list(model.graph.node))
        if node.attribute and c.boolean():
            removed = node.attribute[c.integer(0, len(node.attribute) - 1)]
            node.attribute.remove(removed)
            return Mutant("", f"{node.op_type} {node.name!r}: attribute {removed.name} removed", model)
        name = c.pick(("axis", "perm", "pads", "kernel_shape", "to", "group", "strides", "mode", "axes"))
        value = c.pick(INTERESTING_INTS)
        node.attribute.append(helper.make_attribute(name, value if name not in ("perm", "pads", "axes") else [value]))
        return Mutant("", f"{node.op_type} {node.name!r}: attribute {name}={value} added", model)
    node = c.pick(nodes)
    attr = c.pick(list(node.attribute))
    A = onnx.AttributeProto
    if attr.type == A.INT:
        attr.i = c.pick(INTERESTING_INTS)
        what = attr.i
    elif attr.type == A.INTS:
        variant = c.integer(0, 3)
        values = list(attr.ints)
        if variant == 0 or not values:
            values = [] if c.boolean() else [c.pick(INTERESTING_INTS)]
        elif variant == 1:
            values[c.integer(0, len(values) - 1)] = c.pick(INTERESTING_INTS)
        elif variant == 2:
            values += [c.pick(INTERESTING_INTS)] * c.integer(1, 3)
        else:
            values = values[: c.integer(0, len(values) - 1)]
        del attr.ints[:]
        attr.ints.extend(values)
        what = values
    elif attr.type == A.FLOAT:
        attr.f = c.pick(INTERESTING_FLOATS)
        what = attr.f
    elif attr.type == A.FLOATS:
        values = list(attr.floats) or [1.0]
        values[c.integer(0, len(values) - 1)] = c.pick(INTERESTING_FLOATS)
        del attr.floats[:]
        attr.floats.extend(values)
        what = values
    elif attr.type == A.STRING:
        attr.s = c.pick((b"", b"garbage", b"\xff\xfe", b"NOTSET", b"constant" * 100))
        what = attr.s
    elif attr.type == A.TENSOR:
        variant = c.integer(0, 2)
        if variant == 0:
            attr.t.CopyFrom(numpy_helper.from_array(np.zeros((0,), np.float32), attr.t.name))
        elif variant == 1:
            del attr.t.dims[:]
            attr.t.dims.extend([c.pick((0, 3, 2**20))])
        else:
            attr.t.data_type = c.pick(ELEM_TYPES)
        what = f"tensor variant {variant}"
    elif attr.type == A.GRAPH:
        del attr.g.node[:]
        what = "subgraph emptied"
    else:
        node.attribute.remove(attr)
        what = "removed"
    return Mutant("", f"{node.op_type} {node.name!r}: attribute {attr.name} -> {what}", model)


def m_dims(model, c: Choices) -> Mutant:
    infos = [v for v in _value_infos(model) if v.type.HasField("tensor_type")]
    ints = _int_initializers(model)
    if ints and (not infos or c.integer(0, 3) == 0):
        tensor = c.pick(ints)
        array = numpy_helper.to_array(tensor).copy()
        if array.size:
            flat = array.reshape(-1)
            flat[c.integer(0, flat.size - 1)] = c.pick((0, -1, -7, 2**31 - 1, 2**40, -(2**62)))
            array = flat.reshape(array.shape)
        else:
            array = np.array([c.pick((0, -1, 2**40))], array.dtype)
        with np.errstate(all="ignore"):
            tensor.CopyFrom(numpy_helper.from_array(array.astype(array.dtype), tensor.name))
        return Mutant("", f"shape tensor {tensor.name}: {array.reshape(-1)[:8].tolist()}", model)
    value = c.pick(infos)
    shape = value.type.tensor_type.shape
    variant = c.integer(0, 5)
    if variant <= 1 and len(shape.dim):
        dim = shape.dim[c.integer(0, len(shape.dim) - 1)]
        if variant == 0:
            dim.dim_value = c.pick((0, -1, -5, 2**31, 2**40, 2**62))
            what = f"a dim = {dim.dim_value}"
        else:
            dim.dim_param = c.pick(("", "?", "N", "batch size", "-1", "0"))
            what = f"a dim = {dim.dim_param!r}"
    elif variant == 2:
        shape.dim.add().dim_value = c.pick((1, 3, 0))
        what = "rank + 1"
    elif variant == 3 and len(shape.dim):
        shape.dim.pop()
        what = "rank - 1"
    elif variant == 4:
        value.type.tensor_type.ClearField("shape")
        what = "shape removed"
    else:
        del shape.dim[:]
        what = "rank 0"
    return Mutant("", f"{value.name}: {what}", model)


def m_dtype(model, c: Choices) -> Mutant:
    infos = [v for v in _value_infos(model) if v.type.HasField("tensor_type")]
    new = c.pick(ELEM_TYPES)
    if model.graph.initializer and (not infos or c.boolean()):
        tensor = c.pick(list(model.graph.initializer))
        if c.boolean() and 1 <= new <= 16 and new not in (TensorProto.STRING, TensorProto.UNDEFINED):
            try:
                array = numpy_helper.to_array(tensor)
                with np.errstate(all="ignore"):
                    converted = array.astype(helper.tensor_dtype_to_np_dtype(new))
                tensor.CopyFrom(numpy_helper.from_array(converted, tensor.name))
                return Mutant("", f"initializer {tensor.name}: converted to {TensorProto.DataType.Name(new)}",
                              model)
            except Exception:  # noqa: BLE001 - a type numpy cannot convert to: reinterpret below
                pass
        tensor.data_type = new
        return Mutant("", f"initializer {tensor.name}: data_type set to {new} (bytes kept)", model)
    value = c.pick(infos)
    value.type.tensor_type.elem_type = new
    return Mutant("", f"{value.name}: elem_type {new}", model)


def m_initializer_missing(model, c: Choices) -> Mutant:
    tensor = c.pick(list(model.graph.initializer))
    model.graph.initializer.remove(tensor)
    return Mutant("", f"initializer {tensor.name} removed", model)


def m_initializer_duplicate(model, c: Choices) -> Mutant:
    tensor = c.pick(list(model.graph.initializer))
    twin = copy.deepcopy(tensor)
    if c.boolean():
        twin.CopyFrom(numpy_helper.from_array(np.zeros((c.integer(0, 3),), np.float32), tensor.name))
        what = "a different tensor"
    else:
        what = "the same tensor"
    model.graph.initializer.append(twin)
    return Mutant("", f"initializer {tensor.name} duplicated with {what}", model)


def m_name_duplicate(model, c: Choices) -> Mutant:
    g = model.graph
    variant = c.integer(0, 3)
    names = [o for n in g.node for o in n.output] + [i.name for i in g.input]
    if variant == 0 and len(g.node) >= 1 and names:
        node = c.pick(list(g.node))
        k = c.integer(0, len(node.output) - 1)
        old, new = node.output[k], c.pick(names)
        node.output[k] = new
        return Mutant("", f"{node.op_type} {node.name!r}: output {old} renamed to existing {new}", model)
    if variant == 1 and g.input:
        g.input.append(copy.deepcopy(c.pick(list(g.input))))
        return Mutant("", "a graph input listed twice", model)
    if variant == 2 and g.output:
        g.output.append(copy.deepcopy(c.pick(list(g.output))))
        return Mutant("", "a graph output listed twice", model)
    if g.input and g.initializer:
        tensor = c.pick(list(g.initializer))
        inp = c.pick(list(g.input))
        old = tensor.name
        tensor.name = inp.name
        return Mutant("", f"initializer {old} renamed to the graph input {inp.name}", model)
    node = c.pick(list(g.node))
    node.output[0] = node.input[0] if node.input else "x"
    return Mutant("", f"{node.op_type}: output named as its input", model)


def m_cycle(model, c: Choices) -> Mutant:
    nodes = list(model.graph.node)
    i = c.integer(0, len(nodes) - 1)
    while not nodes[i].input:
        i = (i + 1) % len(nodes)
    j = c.integer(i, len(nodes) - 1)
    k = c.integer(0, len(nodes[i].input) - 1)
    nodes[i].input[k] = nodes[j].output[0]
    return Mutant("", f"node {i} ({nodes[i].op_type}) input {k} reads node {j}'s output {nodes[j].output[0]}", model)


def m_dangling(model, c: Choices) -> Mutant:
    g = model.graph
    variant = c.integer(0, 2)
    if variant == 0 and any(n.input for n in g.node):
        node = c.pick([n for n in g.node if n.input])
        node.input[c.integer(0, len(node.input) - 1)] = "ghost"
        return Mutant("", f"{node.op_type} {node.name!r} reads 'ghost'", model)
    if variant == 1 and g.output:
        g.output[c.integer(0, len(g.output) - 1)].name = "ghost"
        return Mutant("", "a graph output named 'ghost'", model)
    node = c.pick(list(g.node))
    g.node.remove(node)
    return Mutant("", f"node {node.op_type} {node.name!r} removed (its outputs dangle)", model)


def m_empty_graph(model, c: Choices) -> Mutant:
    g = model.graph
    variant = c.integer(0, 4)
    if variant == 0:
        del g.node[:]
        what = "no nodes"
    elif variant == 1:
        del g.output[:]
        what = "no outputs"
    elif variant == 2:
        del g.input[:]
        what = "no inputs"
    elif variant == 3:
        name = g.name
        g.Clear()
        g.name = name
        what = "empty graph"
    else:
        model.ClearField("graph")
        what = "no graph"
    return Mutant("", what, model)


def m_nan_inf(model, c: Choices) -> Mutant:
    tensor = c.pick(_float_tensors(model))
    array = numpy_helper.to_array(tensor).copy()
    value = c.pick((math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 1e-45))
    if array.size == 0:
        return Mutant("", f"{tensor.name}: empty, left", model)
    with np.errstate(all="ignore"):
        if c.boolean():
            array[...] = value
            what = "all"
        else:
            array.reshape(-1)[c.integer(0, array.size - 1)] = value
            what = "one element"
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return Mutant("", f"{tensor.name}: {what} = {value}", model)


def m_opset(model, c: Choices) -> Mutant:
    variant = c.integer(0, 3)
    if variant == 0:
        default = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
        version = c.pick(OPSETS)
        (default[0] if default else model.opset_import.add()).version = version
        return Mutant("", f"ai.onnx opset {version}", model)
    if variant == 1:
        del model.opset_import[:]
        return Mutant("", "no opset_import", model)
    if variant == 2:
        entry = model.opset_import.add()
        entry.domain, entry.version = "", c.pick(OPSETS)
        return Mutant("", f"a second ai.onnx opset entry ({entry.version})", model)
    model.ir_version = c.pick(IR_VERSIONS)
    return Mutant("", f"ir_version {model.ir_version}", model)


def m_domain(model, c: Choices) -> Mutant:
    node = c.pick(list(model.graph.node))
    node.domain = c.pick(DOMAINS)
    if node.domain and c.boolean() and not any(o.domain == node.domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(node.domain, 1))
    if c.integer(0, 4) == 0:
        for opset in model.opset_import:
            if opset.domain == "":
                opset.domain = "ai.onnx"
        return Mutant("", f"{node.op_type} domain {node.domain!r}; default opset spelled 'ai.onnx'", model)
    return Mutant("", f"{node.op_type} {node.name!r} domain {node.domain!r}", model)


def m_op_type(model, c: Choices) -> Mutant:
    node = c.pick(list(model.graph.node))
    variant = c.integer(0, 2)
    if variant == 0:
        old = node.op_type
        node.op_type = c.pick(OP_TYPES + tuple(n.op_type for n in model.graph.node))
        return Mutant("", f"{old} {node.name!r} -> {node.op_type}", model)
    if variant == 1 and node.input:
        node.input.pop(c.integer(0, len(node.input) - 1)) if c.boolean() else node.input.append("")
        return Mutant("", f"{node.op_type} {node.name!r}: {len(node.input)} inputs", model)
    names = [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output]
    if c.boolean() and names:
        node.input.append(c.pick(names))
        return Mutant("", f"{node.op_type} {node.name!r}: an extra input", model)
    node.output.append(f"extra_{c.integer(0, 9)}")
    return Mutant("", f"{node.op_type} {node.name!r}: an extra output", model)


def m_truncate(model, c: Choices) -> Mutant:
    data = model.SerializeToString()
    cut = c.integer(0, max(0, len(data) - 1))
    return Mutant("", f"{cut} of {len(data)} bytes", data=data[:cut])


def m_bit_flip(model, c: Choices) -> Mutant:
    data = bytearray(model.SerializeToString())
    flips = [c.integer(0, len(data) * 8 - 1) for _ in range(c.integer(1, 8))]
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    return Mutant("", f"bits {flips} of {len(data)} bytes", data=bytes(data))


def m_external_data(model, c: Choices) -> Mutant:
    tensors = list(model.graph.initializer) or _float_tensors(model)
    tensor = c.pick(tensors)
    raw = numpy_helper.to_array(tensor).tobytes()
    where = c.pick(EXTERNAL_LOCATIONS)
    files, links = {}, {}
    location, offset, length = where, 0, len(raw)
    if where.startswith("weights.bin"):
        location = "weights.bin"
        files["weights.bin"] = raw
        if where.endswith("@past-end"):
            offset = len(raw) + c.pick((1, 4096, 2**40))
        elif where.endswith("@short"):
            files["weights.bin"] = raw[: len(raw) // 2]
    elif where == "link.bin":
        links["link.bin"] = c.pick(("/etc/passwd", "../outside.bin", "/nonexistent"))
    elif where == "dir.bin":
        files["dir.bin/x"] = b""
    array = numpy_helper.to_array(tensor)
    dims, dtype, name = list(tensor.dims), tensor.data_type, tensor.name
    tensor.Clear()
    tensor.name, tensor.data_type = name, dtype
    tensor.dims.extend(dims)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        if key == "location" and where == "" and c.boolean():
            continue  # no location at all
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    del array
    return Mutant("", f"{name}: external data at {where!r} (offset {offset}, length {length})", model,
                  files=files, links=links)


MUTATORS: dict[str, Callable[[onnx.ModelProto, Choices], Mutant]] = {
    "attribute": m_attribute, "dims": m_dims, "dtype": m_dtype, "initializer-missing": m_initializer_missing,
    "initializer-duplicate": m_initializer_duplicate, "name-duplicate": m_name_duplicate, "cycle": m_cycle,
    "dangling": m_dangling, "empty-graph": m_empty_graph, "nan-inf-weights": m_nan_inf, "opset": m_opset,
    "domain": m_domain, "op-type": m_op_type, "truncate": m_truncate, "bit-flip": m_bit_flip,
    "external-data": m_external_data,
}


# ---------------------------------------------------------------------------- running
@dataclasses.dataclass
class Run:
    code: int | None  # exit status; None when killed by a signal or the time limit
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float


def forked(fn: Callable[[], int], timeout: float, memory: int, folder: Path) -> Run:
    """Run ``fn`` in a forked child (its own process group) with an address-space limit; its
    return value is the exit status, stdout/stderr go to files."""
    out, err = folder / ".stdout", folder / ".stderr"
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.setpgid(0, 0)
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            for fd, path in ((1, out), (2, err)):
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(handle, fd)
                os.close(handle)
            code = fn()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - reported as a traceback, a bug
            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 1)
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - start > timeout:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # what the child left running
    text = [p.read_text(errors="replace") if p.exists() else "" for p in (out, err)]
    if os.WIFSIGNALED(status) and not timed_out:
        return Run(None, os.WTERMSIG(status), False, *text, seconds)
    return Run(None if timed_out else os.WEXITSTATUS(status), None, timed_out, *text, seconds)


def spawned(args: list[str], timeout: float, memory: int, cwd: Path) -> Run:
    """The same command in a fresh ``python -m lepton_opt.cli`` (how a bug is confirmed)."""
    def limits():
        os.setpgid(0, 0)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lepton_opt.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", preexec_fn=limits,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return Run(None, None, True, stdout, stderr, time.perf_counter() - start)
    if proc.returncode < 0:
        return Run(None, -proc.returncode, False, stdout, stderr, time.perf_counter() - start)
    return Run(proc.returncode, None, False, stdout, stderr, time.perf_counter() - start)


def cli_args(command: str, model: Path) -> list[str]:
    if command == "inspect":
        return ["inspect", str(model)]
    if command == "optimize":
        return ["optimize", str(model), "-o", str(model.parent / "out.onnx")]
    return ["compile", str(model), "-o", str(model.parent / "out.lepton")]


def run_cli(args: list[str]) -> int:
    from lepton_opt.cli import main

    main(args=args, prog_name="lepton-opt", standalone_mode=True)
    return 0


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def classify(run: Run) -> str:
    """``ok``, ``user-error``, or a bug: ``crash``, ``hang``, ``internal-error``, ``traceback``,
    ``messy-error`` (exit 2 without exactly one ``error:`` line), ``exit-N``."""
    if run.timed_out:
        return "hang"
    if run.signal is not None:
        return "crash"
    stderr = _ANSI.sub("", run.stderr)
    if "Traceback (most recent call last)" in stderr + run.stdout:
        return "traceback"
    if run.code == 0:
        return "ok"
    if run.code == 2:
        lines = [line for line in stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        others = [line for line in lines if not line.startswith(("error: ", "warning: ", "note: "))]
        return "user-error" if len(errors) == 1 and not others and lines[-1] == errors[0] else "messy-error"
    if "internal error:" in stderr:
        return "internal-error"
    return f"exit-{run.code}"


BUGS = ("crash", "hang", "internal-error", "traceback", "messy-error", "mismatch")


def check_outputs(folder: Path, compiled: bool, optimized: bool) -> int:
    """In a child: the artifact (and the optimized model) against onnxruntime on the mutated
    model, on seeded inputs. Writes ``check.json``: {"compile": verdict, "optimize": verdict},
    a verdict being "match", "mismatch: ...", "ort-declined: ..." or "not-run"."""
    import onnxruntime as ort

    from lepton_opt.api import _ort_feeds
    from lepton_opt.evaluation.accuracy import random_feeds

    verdicts = {"compile": "not-run", "optimize": "not-run"}
    model_path = folder / "model.onnx"

    def session(path):
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def reference(feeds_from):
        try:
            sess = session(model_path)
            specs = [{"name": i.name, "shape": [d if isinstance(d, int) and d >= 0 else 1 for d in (i.shape or [])],
                      "dtype": _ort_dtype(i.type)} for i in sess.get_inputs()]
            feeds = feeds_from(specs)
            if sum(np.asarray(v).size for v in feeds.values()) > MAX_FEED_ELEMENTS:
                return None, "too-large: inputs of more than 2**26 elements, not run"
            names = [o.name for o in sess.get_outputs()]
            wanted = {i.name for i in sess.get_inputs()}
            return feeds, dict(zip(names, sess.run(names, _ort_feeds(sess, {k: v for k, v in feeds.items()
                                                                             if k in wanted}))))
        except Exception as e:  # noqa: BLE001 - onnxruntime does not run the mutated model
            return None, f"ort-declined: {_first_line(e)}"

    if compiled:
        import lepton_opt

        artifact = lepton_opt.load_compiled(folder / "out.lepton")
        sizes = [math.prod(d if isinstance(d, int) else 1 for d in spec["shape"]) for spec in artifact.inputs]
        feeds = random_feeds(artifact.inputs, seed=0) if sum(sizes) <= MAX_FEED_ELEMENTS else {}
        _, ref = reference(lambda specs: feeds) if feeds or not artifact.inputs else (
            None, "too-large: inputs of more than 2**26 elements, not run")
        if isinstance(ref, str):
            verdicts["compile"] = ref
        else:
            verdict = compare(ref, artifact.run(feeds))
            conflict = None if verdict == "match" else declared_shape_conflict(model_path, ref)
            verdicts["compile"] = f"{conflict}; {verdict}" if conflict else verdict
    if optimized:
        feeds, ref = reference(lambda specs: random_feeds(specs, seed=0))
        if isinstance(ref, str):
            verdicts["optimize"] = ref
        else:
            try:
                sess = session(folder / "out.onnx")
                names = [o.name for o in sess.get_outputs()]
                got = dict(zip(names, sess.run(names, _ort_feeds(sess, {
                    k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}))))
            except Exception as e:  # noqa: BLE001 - the optimized model fails where the mutated one ran
                got = None
                verdicts["optimize"] = f"mismatch: onnxruntime fails on the optimized model: {_first_line(e)}"
            if got is not None:
                verdicts["optimize"] = compare(ref, got)
    (folder / "check.json").write_text(json.dumps(verdicts))
    return 0


MAX_FEED_ELEMENTS = 1 << 26


def declared_shape_conflict(model_path: Path, reference: dict) -> str | None:
    """Whether onnxruntime computed an output of another shape than the model declares, fixed
    (it warns and goes on): then the seeded inputs contradict the model, and a lepton-opt build
    that differs, having taken the declaration where inference cannot tell (an Expand to a shape
    read at run time), is reported apart from the mismatches."""
    model = onnx.load(model_path, load_external_data=False)
    for output in model.graph.output:
        if output.name not in reference or not output.type.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in output.type.tensor_type.shape.dim]
        shape = list(np.shape(reference[output.name]))
        if all(d is not None and d >= 0 for d in dims) and dims != shape:
            return f"declared-shape-conflict: {output.name} declared {dims}, onnxruntime computes {shape}"
    return None


def _ort_dtype(type_text: str) -> str:
    name = type_text.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64", "float16": "float16"}.get(name, name)


def compare(reference: dict, got: dict) -> str:
    for name, ref in reference.items():
        if name not in got:
            return f"mismatch: output {name!r} missing"
        value = np.asarray(got[name])
        ref = np.asarray(ref)
        if value.shape != ref.shape:
            return f"mismatch: {name} shape {list(value.shape)} vs onnxruntime {list(ref.shape)}"
        if ref.dtype.kind in "fc" or value.dtype.name == "bfloat16":
            ref64, value64 = ref.astype(np.float64), value.astype(np.float64)
            finite = np.abs(ref64[np.isfinite(ref64)]) if ref.size else np.zeros(0)
            scale = max(1.0, float(finite.max())) if finite.size else 1.0
            tolerance = 1e-2 if "bfloat16" in (ref.dtype.name, value.dtype.name) else 1e-3
            with np.errstate(all="ignore"):
                close = np.isclose(value64, ref64, rtol=tolerance, atol=tolerance * scale, equal_nan=True)
            if not close.all():
                k = int(np.argmin(close.reshape(-1)))
                # Differences only where onnxruntime has NaN or inf: how NaN/inf propagate (see
                # the module docstring), counted apart from other mismatches.
                kind = "nonfinite-mismatch" if not np.isfinite(ref64[~close]).any() else "mismatch"
                return (f"{kind}: {name} differs at {int((~close).sum())} of {ref.size} elements "
                        f"(e.g. {value.reshape(-1)[k]} vs onnxruntime {ref.reshape(-1)[k]})")
        elif not np.array_equal(value, ref):
            return f"mismatch: {name} ({ref.dtype}) differs from onnxruntime"
    return "match"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


# ---------------------------------------------------------------------------- campaign
@dataclasses.dataclass
class Options:
    timeout: float = 60.0
    memory: int = 4 << 30
    out: Path | None = None
    confirm: bool = True
    verbose: bool = False


class Campaign:
    def __init__(self, seeds: list[Seed], options: Options):
        self.seeds, self.options = seeds, options
        self.applicable = {kind: [s for s in seeds if kind in _applicable(s.model)] for kind in KINDS}
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.checks: collections.Counter = collections.Counter()
        self.bugs: list[dict] = []
        self.known: list[dict] = []  # known differences: NaN/inf propagation, inputs against declarations
        self.tried = 0
        self.seconds = 0.0

    def one(self, c: Choices) -> None:
        kind = c.pick(KINDS)  # the kind first, then a model it applies to: kinds come out about even
        seed = c.pick(self.applicable[kind])
        mutant = mutate(seed, kind, c)
        self.tried += 1
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="lepton-fuzz-") as tmp:
            folder = Path(tmp) / "case"
            folder.mkdir()
            path = mutant.write(folder)
            outcomes = {}
            for command in COMMANDS:
                args = cli_args(command, path)
                run = forked(lambda args=args: run_cli(args), self.options.timeout, self.options.memory, folder)
                outcome = classify(run)
                if outcome not in ("ok", "user-error") and self.options.confirm:
                    again = spawned(args, self.options.timeout * 2, self.options.memory, folder)
                    if classify(again) in ("ok", "user-error"):
                        outcome = f"{outcome} (not in a fresh process)"
                        self.checks["fork-only"] += 1
                    run = again if classify(again) not in ("ok", "user-error") else run
                outcomes[command] = outcome
                self.counts[kind][f"{command}:{outcome}"] += 1
                if outcome not in ("ok", "user-error") and "(not in" not in outcome:  # exit-N too
                    self._keep(seed, mutant, command, outcome, run, folder)
            if outcomes["compile"] == "ok" or outcomes["optimize"] == "ok":
                (folder / "check.json").unlink(missing_ok=True)
                run = forked(lambda: check_outputs(folder, outcomes["compile"] == "ok", outcomes["optimize"] == "ok"),
                             self.options.timeout, self.options.memory, folder)
                verdicts = (json.loads((folder / "check.json").read_text()) if (folder / "check.json").exists()
                            else None)
                for command in ("compile", "optimize"):
                    if outcomes[command] != "ok":
                        continue
                    if verdicts is None:
                        verdict = f"check-{classify(run)}"
                    else:
                        verdict = verdicts[command]
                    self.checks[f"{command}:{verdict.split(':')[0]}"] += 1
                    self.counts[kind][f"{command}-check:{verdict.split(':')[0]}"] += 1
                    if verdict.startswith("mismatch") or verdict.startswith("check-"):
                        self._keep(seed, mutant, f"{command} check", verdict, run, folder)
                    elif verdict.startswith(("nonfinite-mismatch", "declared-shape-conflict")):
                        self.known.append({"seed": seed.name, "kind": kind, "mutation": mutant.description,
                                               "command": command, "verdict": verdict})
        self.seconds += time.perf_counter() - start
        if self.options.verbose:
            print(f"[{self.tried}] {seed.name} {kind}: {mutant.description[:100]} -> "
                  + ", ".join(f"{k} {v}" for k, v in outcomes.items()), flush=True)

    def _keep(self, seed: Seed, mutant: Mutant, command: str, outcome: str, run: Run, folder: Path) -> None:
        bug = {"seed": seed.name, "kind": mutant.kind, "mutation": mutant.description, "command": command,
               "outcome": outcome, "stderr": _ANSI.sub("", run.stderr)[-2000:], "stdout": run.stdout[-500:]}
        self.bugs.append(bug)
        print(f"BUG [{len(self.bugs)}] {seed.name} {mutant.kind} ({mutant.description[:120]}): {command} -> {outcome}",
              flush=True)
        if self.options.out is not None:
            keep = self.options.out / "bugs" / f"{len(self.bugs):03d}"
            keep.mkdir(parents=True, exist_ok=True)
            for item in folder.iterdir():
                if item.name in ("model.onnx", "weights.bin") or item.name in mutant.files:
                    shutil.copy(item, keep / item.name)
            (keep / "bug.json").write_text(json.dumps(bug, indent=2))

    def summary(self) -> dict:
        outcomes = collections.Counter()
        for counter in self.counts.values():
            outcomes.update(counter)
        return {"mutations": self.tried, "seeds": len(self.seeds), "seconds": round(self.seconds, 1),
                "per_kind": {k: dict(sorted(v.items())) for k, v in sorted(self.counts.items())},
                "outcomes": dict(sorted(outcomes.items())), "checks": dict(sorted(self.checks.items())),
                "bugs": self.bugs, "known_differences": self.known}


def run_campaign(campaign: Campaign, mutations: int, seed: int) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    @hypothesis_seed(seed)
    @settings(max_examples=mutations, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False, report_multiple_bugs=False)
    @given(st.data())
    def example(data):
        campaign.one(Choices(data=data))

    example()


def print_summary(summary: dict) -> None:
    print(f"\n{summary['mutations']} mutated models from {summary['seeds']} starting models, "
          f"{summary['seconds']:.0f} s; commands: {', '.join(COMMANDS)}")
    columns = ["ok", "user-error", *BUGS[:-1]]
    header = f"{'kind':24s} {'n':>4s} " + " ".join(f"{c:>14s}" for c in columns) + f" {'checked':>8s} {'mismatch':>8s}"
    print(header)
    for kind, counts in summary["per_kind"].items():
        n = sum(v for k, v in counts.items() if k.startswith("inspect:"))
        cells = []
        for column in columns:
            cells.append(sum(v for k, v in counts.items() if k.split(":")[0] in COMMANDS
                             and k.split(":", 1)[1].split(" ")[0] == column))
        checked = sum(v for k, v in counts.items() if "-check:" in k and not k.endswith(":ort-declined"))
        mismatched = sum(v for k, v in counts.items() if k.endswith("-check:mismatch") or "-check:check-" in k)
        print(f"{kind:24s} {n:4d} " + " ".join(f"{c:14d}" for c in cells) + f" {checked:8d} {mismatched:8d}")
    print("(ok / user-error / ...: command runs, 3 per mutation; checked: successful optimize/compile outputs "
          "compared with onnxruntime)")
    print("checks:", json.dumps(summary["checks"]))
    if summary["known_differences"]:
        print(f"not counted as bugs (known, see the module docstring): {len(summary['known_differences'])}")
        for item in summary["known_differences"][:10]:
            print(f"  {item['seed']} {item['kind']} ({item['mutation'][:80]}): {item['command']}: {item['verdict'][:120]}")
    print(f"bugs: {len(summary['bugs'])}")
    for bug in summary["bugs"]:
        print(f"  {bug['seed']} {bug['kind']} ({bug['mutation'][:100]}): {bug['command']} -> {bug['outcome']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutations", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend-cases", type=int, default=60,
                        help="ONNX backend node test models among the starting models (a seeded sample)")
    parser.add_argument("--quick", action="store_true",
                        help="small starting set: the two tiny MLPs, a conv model and 6 of onnx's data/simple models")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per command")
    parser.add_argument("--memory-mb", type=int, default=4096, help="address-space limit per command")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz")
    parser.add_argument("--no-confirm", action="store_true", help="do not rerun bugs in a fresh process")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)

    # What the children need, imported once here (no thread is started by these imports).
    import lepton_opt.api  # noqa: F401
    import lepton_opt.cli  # noqa: F401
    import lepton_opt.targets.compile  # noqa: F401

    seeds = code_seeds(args.quick) + backend_seeds(6 if args.quick else args.backend_cases, args.seed, args.quick)
    cache = Path(tempfile.mkdtemp(prefix="lepton-fuzz-cache-"))
    os.environ["LEPTON_OPT_CACHE"] = str(cache)  # no tuning records of the user's
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.out / "bugs", ignore_errors=True)
    campaign = Campaign(seeds, Options(timeout=args.timeout, memory=args.memory_mb << 20, out=args.out,
                                       confirm=not args.no_confirm, verbose=args.verbose))
    try:
        run_campaign(campaign, args.mutations, args.seed)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        summary = campaign.summary()
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print_summary(summary)
    return 1 if summary["bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())
