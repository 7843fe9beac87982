"""Probe: untuned TVM CPU latency vs onnxruntime, stock pipeline vs ``build_cpu``.

Builds a MobileNetV2-style CNN and a BERT-style encoder with ``onnx.helper`` (seeded random
weights), imports them with TVM's reference ``from_onnx``, compiles them with
``lepton_opt.targets.cpu_schedule.build_cpu`` (and, with ``--stock``, with TVM's stock CPU
pipeline, which is very slow), checks outputs against onnxruntime, and times TVM and
onnxruntime interleaved in one process (2 threads each), printing median latencies and the
ratio tvm/ort. Other processes may share the cores, so only the ratios are meaningful.

    .venv/bin/python benchmarks/cpu_schedule_probe.py [--models mobilenet,bert] [--stock]
        [--bert-hidden 768 --bert-heads 12 --bert-layers 4] [--profile]
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEED = 0
THREADS = 2


# ----------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------

class _Graph:
    def __init__(self, seed: int = SEED):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, arr: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def model(self, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def mobilenet_v2(size: int = 224, width: float = 1.0, num_classes: int = 1000) -> onnx.ModelProto:
    """MobileNetV2 with BatchNorm folded into the convolutions (Conv + bias, Clip(0, 6))."""
    g = _Graph()
    lo, hi = g.const(np.array(0.0, np.float32), "lo"), g.const(np.array(6.0, np.float32), "hi")

    def conv(x, c_in, c_out, k, stride, groups=1, relu6=True):
        fan_in = c_in // groups * k * k
        w = g.rng.normal(0, (2.0 / fan_in) ** 0.5, (c_out, c_in // groups, k, k)).astype(np.float32)
        b = g.rng.normal(0, 0.05, (c_out,)).astype(np.float32)
        y = g.op("Conv", [x, g.const(w), g.const(b, "b")], kernel_shape=[k, k],
                 strides=[stride, stride], pads=[k // 2] * 4, group=groups)
        return g.op("Clip", [y, lo, hi]) if relu6 else y

    def ch(c):
        return max(8, int(c * width + 4) // 8 * 8)

    x = "input"
    c = ch(32)
    y = conv(x, 3, c, 3, 2)
    for t, c_out, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        c_out = ch(c_out)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = c * t
            h = y
            if t != 1:
                h = conv(h, c, hidden, 1, 1)
            h = conv(h, hidden, hidden, 3, stride, groups=hidden)
            h = conv(h, hidden, c_out, 1, 1, relu6=False)
            if stride == 1 and c == c_out:
                h = g.op("Add", [y, h])
            y, c = h, c_out
    y = conv(y, c, 1280, 1, 1)
    y = g.op("GlobalAveragePool", [y])
    y = g.op("Flatten", [y], axis=1)
    w = g.rng.normal(0, 0.02, (num_classes, 1280)).astype(np.float32)
    b = np.zeros(num_classes, np.float32)
    y = g.op("Gemm", [y, g.const(w), g.const(b, "b")], transB=1)
    g.nodes[-1].output[0] = "logits"
    return g.model(
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, num_classes])],
    )


def bert_encoder(seq: int = 128, hidden: int = 768, heads: int = 12, layers: int = 4,
                 ffn_mult: int = 4, decomposed_layernorm: bool = False) -> onnx.ModelProto:
    """BERT-style encoder on hidden states: MatMul+Add, multi-head attention, Erf-GELU FFN."""
    g = _Graph(seed=SEED + 1)
    head_dim = hidden // heads
    ffn = hidden * ffn_mult

    def dense(x, k, n):
        w = g.rng.normal(0, 0.02, (k, n)).astype(np.float32)
        b = g.rng.normal(0, 0.02, (n,)).astype(np.float32)
        return g.op("Add", [g.op("MatMul", [x, g.const(w)]), g.const(b, "b")])

    def layernorm(x):
        gamma = (1 + 0.1 * g.rng.normal(size=hidden)).astype(np.float32)
        beta = (0.1 * g.rng.normal(size=hidden)).astype(np.float32)
        if not decomposed_layernorm:
            return g.op("LayerNormalization", [x, g.const(gamma), g.const(beta, "b")],
                        axis=-1, epsilon=1e-12)
        mean = g.op("ReduceMean", [x, g.const(np.array([-1], np.int64), "ax")], keepdims=1)
        d = g.op("Sub", [x, mean])
        var = g.op("ReduceMean", [g.op("Mul", [d, d]), g.const(np.array([-1], np.int64), "ax")],
                   keepdims=1)
        std = g.op("Sqrt", [g.op("Add", [var, g.const(np.array(1e-12, np.float32), "eps")])])
        return g.op("Add", [g.op("Mul", [g.op("Div", [d, std]), g.const(gamma)]),
                            g.const(beta, "b")])

    def heads_of(x, perm):
        shape = g.const(np.array([1, seq, heads, head_dim], np.int64), "shape")
        return g.op("Transpose", [g.op("Reshape", [x, shape])], perm=perm)

    x = "hidden_states"
    for _ in range(layers):
        q = heads_of(dense(x, hidden, hidden), [0, 2, 1, 3])
        k = heads_of(dense(x, hidden, hidden), [0, 2, 3, 1])
        v = heads_of(dense(x, hidden, hidden), [0, 2, 1, 3])
        s = g.op("MatMul", [q, k])
        s = g.op("Div", [s, g.const(np.array(head_dim ** 0.5, np.float32), "scale")])
        p = g.op("Softmax", [s], axis=-1)
        a = g.op("Transpose", [g.op("MatMul", [p, v])], perm=[0, 2, 1, 3])
        a = g.op("Reshape", [a, g.const(np.array([1, seq, hidden], np.int64), "shape")])
        x = layernorm(g.op("Add", [dense(a, hidden, hidden), x]))
        h = dense(x, hidden, ffn)
        erf = g.op("Erf", [g.op("Div", [h, g.const(np.array(2 ** 0.5, np.float32), "c")])])
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, g.const(np.array(1, np.float32), "one")])]),
                         g.const(np.array(0.5, np.float32), "half")])
        x = layernorm(g.op("Add", [dense(h, ffn, hidden), x]))
    g.nodes[-1].output[0] = "last_hidden_state"
    return g.model(
        [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, seq, hidden])],
    )


# ----------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------

def untangle_reference_clip(mod):
    """Turn from_onnx's ``Clip`` (call_tir of TOPI maximum/minimum on a computed scalar) into
    ``R.maximum``/``R.minimum`` with a constant, as the project's importer emits it, so layout
    conversion sees through ReLU6. Only for this probe's use of TVM's reference importer."""
    import tvm
    from tvm import relax

    mod = relax.transform.FoldConstant()(mod)

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir":
                callee = call.args[0]
                kind = callee.name_hint.rstrip("0123456789") if isinstance(callee, tvm.ir.GlobalVar) else ""
                if kind in ("maximum", "minimum"):
                    x, c = call.args[1].fields
                    if isinstance(c, relax.Var) and self.lookup_binding(c) is not None:
                        c = self.lookup_binding(c)
                    if isinstance(c, tvm.ir.Constant):
                        return getattr(relax.op, kind)(x, c)
            return call

    rewriter = Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mod[gv] = rewriter.visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)


def ort_session(model: onnx.ModelProto, spinning: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    if not spinning:
        # onnxruntime's workers spin-wait after each run by default; interleaved with TVM on
        # 2 cores they steal the cores TVM's pool needs (measured: TVM 10x slower).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def interleaved(fns: dict[str, callable], warmup: int = 3, rounds: int = 20,
                min_seconds: float = 0.0) -> dict[str, float]:
    """Median seconds per call of each fn, alternating calls so that load hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    r = 0
    while r < rounds or time.perf_counter() - start < min_seconds:
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        r += 1
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="mobilenet,bert")
    ap.add_argument("--stock", action="store_true", help="also build with TVM's stock pipeline (slow)")
    ap.add_argument("--bert-hidden", type=int, default=768)
    ap.add_argument("--bert-heads", type=int, default=12)
    ap.add_argument("--bert-layers", type=int, default=4)
    ap.add_argument("--bert-seq", type=int, default=128)
    ap.add_argument("--decomposed-layernorm", action="store_true")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--profile", action="store_true", help="per-kernel time of the build_cpu build")
    ap.add_argument("--mcpu", default="znver5")
    args = ap.parse_args()

    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from lepton_opt.targets.cpu_schedule import build_cpu, profile_kernels

    target = tvm.target.Target({"kind": "llvm", "mcpu": args.mcpu, "num-cores": THREADS})
    rng = np.random.default_rng(SEED)
    models = {
        "mobilenet": lambda: (mobilenet_v2(), {"input": (1, 3, 224, 224)}),
        "bert": lambda: (bert_encoder(args.bert_seq, args.bert_hidden, args.bert_heads,
                                      args.bert_layers,
                                      decomposed_layernorm=args.decomposed_layernorm),
                         {"hidden_states": (1, args.bert_seq, args.bert_hidden)}),
    }
    for name in args.models.split(","):
        model, shapes = models[name]()
        feeds = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
        sess = ort_session(model, spinning=False)
        sess_spin = ort_session(model, spinning=True)
        ref = sess.run(None, feeds)[0]
        mod = untangle_reference_clip(from_onnx(model, shape_dict=shapes, keep_params_in_input=False))
        builds = {"build_cpu": lambda m: build_cpu(m, target)}
        if args.stock:
            builds["stock"] = lambda m: tvm.compile(m, target=target)
        fns = {"ort": lambda: sess.run(None, feeds)}
        vms = {}
        for bname, build in builds.items():
            t0 = time.perf_counter()
            ex = build(mod)
            compile_s = time.perf_counter() - t0
            vm = relax.VirtualMachine(ex, tvm.cpu())
            inputs = [tvm.runtime.tensor(feeds[k]) for k in shapes]
            out = vm["main"](*inputs)
            out = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
            err = float(np.max(np.abs(out - ref)))
            scale = float(np.max(np.abs(ref)))
            print(f"[{name}] {bname}: compile {compile_s:.1f} s, max abs err {err:.2e} "
                  f"(rel {err / scale:.1e})", flush=True)
            fns[bname] = (lambda vm=vm, inputs=inputs: vm["main"](*inputs))
            vms[bname] = (ex, inputs)
        # The stock build can take seconds per call: few rounds, then.
        rounds = 3 if args.stock else args.rounds
        med = interleaved(fns, warmup=2, rounds=rounds)
        line = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in med.items())
        ratios = ", ".join(f"{k}/ort {med[k] / med['ort']:.2f}x" for k in med if k != "ort")
        print(f"[{name}] interleaved medians (ort without spinning): {line}  =>  {ratios}",
              flush=True)
        # Each alone, one after the other, onnxruntime with its default (spinning) pool: the
        # way each would run in production; more exposed to drift in the machine's load.
        alone = {"ort": interleaved({"ort": lambda: sess_spin.run(None, feeds)}, 2, rounds)["ort"]}
        alone["build_cpu"] = interleaved({"b": fns["build_cpu"]}, 2, rounds)["b"]
        alone["ort2"] = interleaved({"ort": lambda: sess_spin.run(None, feeds)}, 2, rounds)["ort"]
        ort_alone = min(alone["ort"], alone["ort2"])
        print(f"[{name}] alone medians: ort (default spinning) {alone['ort'] * 1e3:.2f} / "
              f"{alone['ort2'] * 1e3:.2f} ms, build_cpu {alone['build_cpu'] * 1e3:.2f} ms  =>  "
              f"build_cpu/ort {alone['build_cpu'] / ort_alone:.2f}x", flush=True)
        if args.profile:
            ex, inputs = vms["build_cpu"]
            rows = profile_kernels(ex, inputs)
            total = sum(t for _, t in rows)
            print(f"[{name}] per-kernel (sum {total * 1e3:.2f} ms), top 15:")
            for kname, t in rows[:15]:
                print(f"    {t * 1e3:8.3f} ms  {100 * t / total:5.1f}%  {kname}")


if __name__ == "__main__":
    main()
