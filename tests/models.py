"""Small, seeded ONNX test models built with onnx.helper and numpy only.

Every builder returns an ``onnx.ModelProto`` that passes
``onnx.checker.check_model(m, full_check=True)`` and runs in onnxruntime.
``batch`` may be an int (static) or a str (a symbolic dim such as ``"N"``).
Weights are drawn from ``numpy.random.default_rng(seed)`` so the same
arguments always give byte-identical models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "resnet_cnn",
    "mobilenet_block_cnn",
    "transformer_layer",
    "tiny_mlp",
    "random_inputs",
    "ort_run",
]

Dim = int | str


class _GraphBuilder:
    """Collects nodes and initializers; hands out unique tensor names."""

    def __init__(self, seed: int, opset: int):
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}

    def fresh(self, prefix: str) -> str:
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        return f"{prefix}_{n}"

    def const(self, value, prefix: str = "const", dtype=np.float32) -> str:
        name = self.fresh(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], num_outputs: int = 1, **attrs):
        """Appends a node; returns its output name (or list of names)."""
        base = self.fresh(op_type.lower())
        outputs = [base] if num_outputs == 1 else [f"{base}_out{i}" for i in range(num_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=base, **attrs))
        return outputs[0] if num_outputs == 1 else outputs

    def normal(self, shape, std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    # -- ops whose signature changed across opsets --------------------------

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:  # axes moved from attribute to input in opset 13
            return self.op("Unsqueeze", [x, self.const(list(axes), "axes", np.int64)])
        return self.op("Unsqueeze", [x], axes=list(axes))

    def reduce_mean_last(self, x: str) -> str:
        if self.opset >= 18:  # axes moved from attribute to input in opset 18
            return self.op("ReduceMean", [x, self.const([-1], "axes", np.int64)], keepdims=1)
        return self.op("ReduceMean", [x], axes=[-1], keepdims=1)

    # -- common layers -------------------------------------------------------

    def conv(self, x, c_in, c_out, k, stride=1, group=1, bias=False, prefix="conv") -> str:
        # He init keeps activations O(1) through the stack, so outputs stay finite.
        fan_in = (c_in // group) * k * k
        w = self.const(self.normal((c_out, c_in // group, k, k), np.sqrt(2.0 / fan_in)), f"{prefix}_w")
        inputs = [x, w]
        if bias:
            inputs.append(self.const(self.normal((c_out,), 0.1), f"{prefix}_b"))
        return self.op(
            "Conv", inputs, kernel_shape=[k, k], strides=[stride, stride],
            pads=[k // 2] * 4, group=group,
        )

    def batch_norm(self, x: str, c: int, prefix="bn") -> str:
        # Non-trivial statistics so that BN folding bugs change the output.
        scale = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        bias = self.normal((c,), 0.1)
        mean = self.normal((c,), 0.1)
        var = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        names = [self.const(v, f"{prefix}_{k}") for k, v in
                 (("scale", scale), ("bias", bias), ("mean", mean), ("var", var))]
        return self.op("BatchNormalization", [x, *names], epsilon=1e-5)

    def linear_matmul(self, x: str, d_in: int, d_out: int, prefix="fc") -> str:
        """MatMul with a constant [d_in, d_out] weight, then Add bias (torch's nn.Linear export)."""
        w = self.const(self.normal((d_in, d_out), 1.0 / np.sqrt(d_in)), f"{prefix}_w")
        b = self.const(self.normal((d_out,), 0.02), f"{prefix}_b")
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def gemm(self, x: str, d_in: int, d_out: int, prefix="fc") -> str:
        """Gemm with transB=1, the layout torch exports for nn.Linear on 2-D input."""
        w = self.const(self.normal((d_out, d_in), 1.0 / np.sqrt(d_in)), f"{prefix}_w")
        b = self.const(self.normal((d_out,), 0.02), f"{prefix}_b")
        return self.op("Gemm", [x, w, b], transB=1)

    # -- model assembly ------------------------------------------------------

    def build(self, name, inputs, outputs, output_map: Mapping[str, str]) -> onnx.ModelProto:
        """Renames the final tensors in ``output_map`` (internal -> public) and wraps a model."""
        for node in self.nodes:
            node.output[:] = [output_map.get(o, o) for o in node.output]
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        opset_imports = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(
            graph, opset_imports=opset_imports, producer_name="lepton-opt-tests",
            # The oldest IR version that supports this opset: what ORT accepts.
            ir_version=helper.find_min_ir_version_for(opset_imports),
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def _value_info(name: str, elem_type: int, shape: Sequence[Dim]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def resnet_cnn(batch: Dim = 1, num_classes: int = 10, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Small ResNet: stem Conv-BN-Relu, MaxPool, two residual blocks, GAP, Flatten, Gemm.

    Input ``input`` [batch, 3, 32, 32]; output ``logits`` [batch, num_classes].
    Block 1 is an identity block (16 ch); block 2 downsamples with stride 2 to
    32 ch through a 1x1 Conv+BN shortcut.
    """
    g = _GraphBuilder(seed, opset)
    x = g.op("Relu", [g.batch_norm(g.conv("input", 3, 16, 3), 16)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 16x16

    def residual_block(x, c_in, c_out, stride):
        y = g.op("Relu", [g.batch_norm(g.conv(x, c_in, c_out, 3, stride), c_out)])
        y = g.batch_norm(g.conv(y, c_out, c_out, 3), c_out)
        shortcut = x
        if stride != 1 or c_in != c_out:
            shortcut = g.batch_norm(g.conv(x, c_in, c_out, 1, stride, prefix="downsample"), c_out)
        return g.op("Relu", [g.op("Add", [y, shortcut])])

    x = residual_block(x, 16, 16, 1)
    x = residual_block(x, 16, 32, 2)  # 8x8
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    logits = g.gemm(x, 32, num_classes)
    return g.build(
        "resnet_cnn",
        [_value_info("input", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
        {logits: "logits"},
    )


def mobilenet_block_cnn(batch: Dim = 1, num_classes: int = 10, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """MobileNetV2/V3-style CNN ending in Softmax.

    Stem Conv + Clip(0, 6) (ReLU6, min/max as inputs); an inverted-residual
    block (1x1 expand + ReLU6, depthwise 3x3 + HardSwish, 1x1 project,
    residual Add); a block with a squeeze-excite gate (HardSigmoid); then
    GlobalAveragePool, Reshape, Gemm, Softmax. Input ``input`` [batch, 3, 32, 32];
    output ``probs`` [batch, num_classes]. Needs opset >= 14 (HardSwish).
    """
    if opset < 14:
        raise ValueError("mobilenet_block_cnn needs opset >= 14 for HardSwish")
    g = _GraphBuilder(seed, opset)
    relu6_min = g.const(0.0, "relu6_min")
    relu6_max = g.const(6.0, "relu6_max")

    def relu6(x):
        return g.op("Clip", [x, relu6_min, relu6_max])

    x = relu6(g.conv("input", 3, 16, 3, stride=2, bias=True))  # 16x16
    # Inverted residual: expand 16 -> 64, depthwise, project back to 16.
    y = relu6(g.conv(x, 16, 64, 1, bias=True))
    y = g.op("HardSwish", [g.conv(y, 64, 64, 3, group=64, bias=True, prefix="dwconv")])
    y = g.conv(y, 64, 16, 1, bias=True)
    x = g.op("Add", [x, y])
    # Widen to 32 channels, then a squeeze-excite gate as in MobileNetV3.
    x = relu6(g.conv(x, 16, 32, 1, bias=True))
    x = g.op("HardSwish", [g.conv(x, 32, 32, 3, stride=2, group=32, bias=True, prefix="dwconv")])  # 8x8
    gate = g.op("GlobalAveragePool", [x])
    gate = g.op("Relu", [g.conv(gate, 32, 8, 1, bias=True, prefix="se")])
    gate = g.op("HardSigmoid", [g.conv(gate, 8, 32, 1, bias=True, prefix="se")], alpha=1.0 / 6, beta=0.5)
    x = g.op("Mul", [x, gate])
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Reshape", [x, g.const([-1, 32], "shape", np.int64)])
    probs = g.op("Softmax", [g.gemm(x, 32, num_classes)], axis=-1)
    return g.build(
        "mobilenet_block_cnn",
        [_value_info("input", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [_value_info("probs", TensorProto.FLOAT, [batch, num_classes])],
        {probs: "probs"},
    )


def transformer_layer(
    batch: Dim = 1,
    seq: int = 16,
    hidden: int = 64,
    heads: int = 4,
    ffn: int = 256,
    layernorm: str = "decomposed",
    mask_dtype: str = "int64",
    mask_value: float = -10000.0,
    seed: int = 0,
    opset: int = 17,
) -> onnx.ModelProto:
    """One BERT/ViT encoder layer laid out the way torch's TorchScript exporter emits it.

    Inputs ``x`` [batch, seq, hidden] float and ``attention_mask`` [batch, seq]
    (``mask_dtype`` "int64" or "float", 1 = attend). Output ``y`` [batch, seq, hidden].
    Head split/merge reshapes take shapes computed at run time
    (Shape -> Gather -> Unsqueeze -> Concat -> Reshape). ``layernorm`` is
    "decomposed" (ReduceMean/Sub/Pow/.../Add, as torch exports before opset 17)
    or "fused" (LayerNormalization, needs opset >= 17). ``mask_value`` is the
    additive bias for masked positions: -10000 (old BERT) or
    ``np.finfo(np.float32).min`` (newer transformers).
    """
    if layernorm not in ("decomposed", "fused"):
        raise ValueError(f"layernorm must be 'decomposed' or 'fused', not {layernorm!r}")
    if mask_dtype not in ("int64", "float"):
        raise ValueError(f"mask_dtype must be 'int64' or 'float', not {mask_dtype!r}")
    if layernorm == "fused" and opset < 17:
        raise ValueError("LayerNormalization needs opset >= 17")
    if opset < 13:
        raise ValueError("transformer_layer needs opset >= 13")
    if hidden % heads:
        raise ValueError("hidden must be divisible by heads")
    head_dim = hidden // heads
    g = _GraphBuilder(seed, opset)

    def layer_norm(x):
        gamma = g.const(g.rng.uniform(0.8, 1.2, hidden).astype(np.float32), "ln_gamma")
        beta = g.const(g.normal((hidden,), 0.05), "ln_beta")
        if layernorm == "fused":
            return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-12)
        mean = g.reduce_mean_last(x)
        centered = g.op("Sub", [x, mean])
        var = g.reduce_mean_last(g.op("Pow", [centered, g.const(2.0, "pow_exp")]))
        std = g.op("Sqrt", [g.op("Add", [var, g.const(1e-12, "ln_eps")])])
        return g.op("Add", [g.op("Mul", [g.op("Div", [centered, std]), gamma]), beta])

    def dim(x, axis):
        """Unsqueezed size of ``x`` along ``axis`` computed at run time, as torch exports x.size(axis)."""
        size = g.op("Gather", [g.op("Shape", [x]), g.const(axis, "index", np.int64)], axis=0)
        return g.unsqueeze(size, [0])

    def split_heads(t, perm):
        shape = g.op("Concat", [dim(t, 0), dim(t, 1), g.const([heads], "heads", np.int64),
                                g.const([head_dim], "head_dim", np.int64)], axis=0)
        return g.op("Transpose", [g.op("Reshape", [t, shape])], perm=perm)

    x = "x"
    q = split_heads(g.linear_matmul(x, hidden, hidden, "query"), [0, 2, 1, 3])
    # K is transposed straight to [B, heads, head_dim, S]: torch folds permute + transpose(-1, -2).
    k_t = split_heads(g.linear_matmul(x, hidden, hidden, "key"), [0, 2, 3, 1])
    v = split_heads(g.linear_matmul(x, hidden, hidden, "value"), [0, 2, 1, 3])

    scores = g.op("Div", [g.op("MatMul", [q, k_t]), g.const(np.sqrt(head_dim), "scale")])
    # Additive mask: (1 - mask[:, None, None, :]) * mask_value.
    mask = g.unsqueeze(g.unsqueeze("attention_mask", [1]), [2])
    if mask_dtype == "int64":  # a float mask needs no Cast, and torch emits none for it
        mask = g.op("Cast", [mask], to=TensorProto.FLOAT)
    mask_bias = g.op("Mul", [g.op("Sub", [g.const(1.0, "one"), mask]), g.const(mask_value, "mask_value")])
    probs = g.op("Softmax", [g.op("Add", [scores, mask_bias])], axis=-1)

    context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    merged_shape = g.op("Concat", [dim(context, 0), dim(context, 1),
                                   g.const([hidden], "hidden", np.int64)], axis=0)
    context = g.op("Reshape", [context, merged_shape])
    attn_out = layer_norm(g.op("Add", [g.linear_matmul(context, hidden, hidden, "attn_out"), x]))

    # FFN with exact (erf) GELU: 0.5 * h * (1 + erf(h / sqrt(2))).
    h = g.linear_matmul(attn_out, hidden, ffn, "ffn_in")
    erf = g.op("Erf", [g.op("Div", [h, g.const(1.4142135, "sqrt2")])])
    gelu = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, g.const(1.0, "one")])]), g.const(0.5, "half")])
    y = layer_norm(g.op("Add", [g.linear_matmul(gelu, ffn, hidden, "ffn_out"), attn_out]))

    mask_type = TensorProto.INT64 if mask_dtype == "int64" else TensorProto.FLOAT
    return g.build(
        "transformer_layer",
        [_value_info("x", TensorProto.FLOAT, [batch, seq, hidden]),
         _value_info("attention_mask", mask_type, [batch, seq])],
        [_value_info("y", TensorProto.FLOAT, [batch, seq, hidden])],
        {y: "y"},
    )


def tiny_mlp(
    batch: Dim = 1, in_features: int = 16, hidden: int = 32, out_features: int = 8,
    seed: int = 0, opset: int = 17,
) -> onnx.ModelProto:
    """Two MatMul+Add+Relu layers (~3 KB); input ``x`` [batch, 16], output ``y`` [batch, 8]."""
    g = _GraphBuilder(seed, opset)
    h = g.op("Relu", [g.linear_matmul("x", in_features, hidden)])
    y = g.op("Relu", [g.linear_matmul(h, hidden, out_features)])
    return g.build(
        "tiny_mlp",
        [_value_info("x", TensorProto.FLOAT, [batch, in_features])],
        [_value_info("y", TensorProto.FLOAT, [batch, out_features])],
        {y: "y"},
    )


def _padding_mask(rng: np.random.Generator, shape: Sequence[int], dtype) -> np.ndarray:
    """Right-padded 0/1 mask over the last axis; every row keeps at least one 1."""
    length = shape[-1]
    lengths = rng.integers(1, length + 1, size=tuple(shape[:-1]) + (1,))
    return (np.arange(length) < lengths).astype(dtype)


def random_inputs(
    model: onnx.ModelProto,
    seed: int = 0,
    shapes: Mapping[str, int | Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded feeds for every graph input that is not an initializer.

    ``shapes`` maps a symbolic dim name (e.g. ``"N"``) to its size, or an input
    name to its full shape; other symbolic or unknown dims default to 2.
    Float inputs are standard normal; integer and bool inputs, and inputs whose
    name contains "mask", get 0/1 padding masks with at least one 1 per row.
    """
    shapes = dict(shapes or {})
    rng = np.random.default_rng(seed)
    initializer_names = {init.name for init in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in initializer_names:
            continue
        tensor_type = inp.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if inp.name in shapes:
            shape = list(shapes[inp.name])
        else:
            shape = [
                d.dim_value if d.HasField("dim_value") else int(shapes.get(d.dim_param, 2))
                for d in tensor_type.shape.dim
            ]
        if "mask" in inp.name.lower() or not np.issubdtype(dtype, np.floating):
            feeds[inp.name] = _padding_mask(rng, shape, dtype)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def ort_run(model: onnx.ModelProto | str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs ``model`` in onnxruntime (CPU, no graph optimizations, 1 thread): the reference result."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))
