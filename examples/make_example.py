"""Regenerates examples/mobilenet_tiny.onnx, the small bundled example model.

A MobileNetV2-style CNN (input "image" [1, 3, 64, 64], output "logits"
[1, 10]) built with onnx.helper and numpy only, so no torch is needed. Weights
come from a fixed seed, so every run writes a byte-identical file:

    python examples/make_example.py [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
SEED = 0
DEFAULT_OUT = Path(__file__).resolve().parent / "mobilenet_tiny.onnx"

# Inverted-residual blocks: (expand ratio, output channels, stride).
BLOCKS = [(1, 16, 1), (4, 24, 2), (4, 24, 1), (4, 32, 2), (4, 32, 1)]


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def _name(self, prefix: str) -> str:
        return f"{prefix}_{len(self.nodes)}_{len(self.initializers)}"

    def const(self, array: np.ndarray, prefix: str) -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def conv_bn(self, x: str, c_in: int, c_out: int, kernel: int, stride: int = 1, group: int = 1) -> str:
        """Bias-free Conv + BatchNormalization, the pattern torch training graphs export."""
        fan_in = (c_in // group) * kernel * kernel
        w = self.rng.standard_normal((c_out, c_in // group, kernel, kernel)) * np.sqrt(2.0 / fan_in)
        y = self.op("Conv", [x, self.const(w, "conv_w")], kernel_shape=[kernel, kernel],
                    strides=[stride, stride], pads=[kernel // 2] * 4, group=group)
        # Non-trivial statistics, so that folding BN into the conv actually changes weights.
        stats = [
            self.rng.uniform(0.5, 1.5, c_out),  # scale
            self.rng.standard_normal(c_out) * 0.1,  # bias
            self.rng.standard_normal(c_out) * 0.1,  # running mean
            self.rng.uniform(0.5, 1.5, c_out),  # running var
        ]
        names = [self.const(s, f"bn_{k}") for s, k in zip(stats, ("scale", "bias", "mean", "var"))]
        return self.op("BatchNormalization", [y, *names], epsilon=1e-5)

    def relu6(self, x: str) -> str:
        return self.op("Clip", [x, self.const(np.array(0.0), "min"), self.const(np.array(6.0), "max")])


def build_model(seed: int = SEED) -> onnx.ModelProto:
    """The example model; the same seed always gives the same bytes."""
    b = _Builder(seed)
    x = b.relu6(b.conv_bn("image", 3, 16, 3, stride=2))  # 32x32
    c_in = 16
    for expand, c_out, stride in BLOCKS:
        hidden = c_in * expand
        y = b.relu6(b.conv_bn(x, c_in, hidden, 1)) if expand != 1 else x
        y = b.relu6(b.conv_bn(y, hidden, hidden, 3, stride=stride, group=hidden))  # depthwise
        y = b.conv_bn(y, hidden, c_out, 1)  # linear projection: no activation
        x = b.op("Add", [x, y]) if stride == 1 and c_in == c_out else y
        c_in = c_out
    x = b.relu6(b.conv_bn(x, c_in, 128, 1))
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    w = b.rng.standard_normal((10, 128)) / np.sqrt(128)
    bias = b.rng.standard_normal(10) * 0.01
    b.op("Gemm", [x, b.const(w, "fc_w"), b.const(bias, "fc_b")], output="logits", transB=1)

    graph = helper.make_graph(
        b.nodes, "mobilenet_tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        b.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="lepton-opt-example",
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    onnx.save(build_model(), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
