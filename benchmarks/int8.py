"""Models quantized by onnxruntime's own ``quantize_static``, compiled by lepton-opt.

    python benchmarks/int8.py [--models resnet50,mobilenet_v2,bert_base] [--threads 2]
        [--duration 20] [--json out.json]

For each suite model (the export of ``models.py``):

1. onnxruntime's ``quantize_static`` writes a QDQ model (per-channel symmetric int8 weights,
   uint8 activations, minmax, calibrated on 16 inputs seeded apart from the evaluation inputs),
   exactly as an onnxruntime user would produce it; lepton-opt's quantizer is not involved.
2. ``lepton_opt.compile`` builds that file. The lowered module is inspected: how many integer
   kernels (``int8_conv`` / ``int8_dense``) it calls, and how many float convolutions or matmuls
   are left.
3. On 4 evaluation inputs, the build's outputs are compared with onnxruntime running the same QDQ
   file, with its graph optimizations on (its own int8 kernels, what users deploy) and off (the
   ONNX semantics: dequantize, float op, quantize): max abs error, that error in quantization
   steps of the output, cosine. For scale, onnxruntime's own int8 kernels are compared with its
   reference semantics the same way.
4. Latency of the build, of onnxruntime on the QDQ file and of onnxruntime fp32 on the float
   model, interleaved in one run (blocks of runs, shuffled rounds, medians), 2 threads each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
MODELS = ("resnet50", "mobilenet_v2", "bert_base")
EVAL_SAMPLES = 4
CALIBRATION_SAMPLES = 16


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of interleaved timing per model")
    parser.add_argument("--model-dir", type=Path, default=HERE / "results" / "models")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def _inputs(name: str, seed: int) -> dict[str, np.ndarray]:
    import models as bench_models

    spec = bench_models.MODELS[name]
    return {n: t.numpy() for n, t in zip(spec.input_names, bench_models.example_inputs(name, 1, seed=seed))}


def ort_quantize_static(name: str, src: Path, dst: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([_inputs(name, 1000 + i) for i in range(CALIBRATION_SAMPLES)])

        def get_next(self):
            return next(self._it, None)

    # onnxruntime's documented first step: shape inference and its own graph cleanup.
    prepared = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _output_steps(qdq: onnx.ModelProto) -> dict[str, float]:
    """Each graph output's quantization step: the scale of the DequantizeLinear producing it."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    steps = {}
    for out in qdq.graph.output:
        node = next((n for n in qdq.graph.node if out.name in n.output), None)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in inits:
            steps[out.name] = float(inits[node.input[1]].max())
    return steps


def _kernel_counts(qdq: onnx.ModelProto) -> dict[str, int]:
    import lepton_opt
    from lepton_opt.targets.compile import lower_model

    text = lower_model(lepton_opt.load(qdq)).mod.script()
    return {
        "int8_conv": text.count("R.call_tir(cls.int8_conv"),
        "int8_dense": text.count("R.call_tir(cls.int8_dense"),
        "float_conv2d": sum(1 for line in text.splitlines() if "R.nn.conv2d(" in line and "int32" not in line),
        "float_matmul": sum(1 for line in text.splitlines() if "R.matmul(" in line and "int32" not in line),
    }


def _errors(ref: dict, got: dict, steps: dict) -> dict:
    from lepton_opt.evaluation.accuracy import compare

    report = compare(ref, got)
    return {e.name: {"max_abs": e.max_abs, "steps": e.max_abs / steps[e.name] if e.name in steps else None,
                     "cosine": e.cosine} for e in report.outputs}


def measure(name: str, model_dir: Path, threads: int, duration: float) -> dict:
    import lepton_opt
    from lepton_opt.evaluation.accuracy import ort_session
    from lepton_opt.evaluation.latency import time_interleaved

    src = model_dir / f"{name}.onnx"
    if not src.exists():
        import models as bench_models

        bench_models.export(name, src)
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / f"{name}.qdq.onnx"
        start = time.perf_counter()
        ort_quantize_static(name, src, dst)
        quantize_s = time.perf_counter() - start
        qdq = onnx.load(dst)
    ops = {}
    for node in qdq.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    start = time.perf_counter()
    compiled = lepton_opt.compile(qdq)
    compile_s = time.perf_counter() - start
    kernels = _kernel_counts(qdq)

    steps = _output_steps(qdq)
    ort_on = ort_session(qdq, threads=threads, optimize=True, spinning=False)
    ort_off = ort_session(qdq, threads=threads, optimize=False)
    ort_fp32 = ort_session(str(src), threads=threads, optimize=True, spinning=False)
    names = [o.name for o in ort_on.get_outputs()]
    vs_on, vs_off, ort_vs_ort = [], [], []
    for seed in range(EVAL_SAMPLES):
        feeds = _inputs(name, seed)
        got = compiled.run(feeds)
        optimized = dict(zip(names, ort_on.run(names, feeds)))
        reference = dict(zip(names, ort_off.run(names, feeds)))
        vs_on.append(_errors(optimized, got, steps))
        vs_off.append(_errors(reference, got, steps))
        ort_vs_ort.append(_errors(reference, optimized, steps))

    def worst(rows):
        out = {}
        for n in rows[0]:
            out[n] = {"max_abs": max(r[n]["max_abs"] for r in rows),
                      "steps": None if rows[0][n]["steps"] is None else max(r[n]["steps"] for r in rows),
                      "cosine": min(r[n]["cosine"] for r in rows)}
        return out

    feeds = _inputs(name, 0)
    engines = {"lepton-opt int8": lambda: compiled.run(feeds), "onnxruntime int8": lambda: ort_on.run(None, feeds),
               "onnxruntime fp32": lambda: ort_fp32.run(None, feeds)}
    calls = list(engines.values())
    one = statistics.median(time_interleaved(calls, 3, warmup=2)[0]) / 1e3
    block = max(3, min(100, int(0.1 / max(one, 1e-6))))
    rounds = max(5, int(duration / (len(calls) * block * max(one, 1e-6))))
    times = time_interleaved(calls, rounds, warmup=2, shuffle_seed=0, block=block, discard=1)
    per_round = block - 1
    medians = {n: [statistics.median(t[i:i + per_round]) for i in range(0, len(t), per_round)]
               for n, t in zip(engines, times)}

    def speedup(a, b):  # how many times faster a ran than b, paired by round
        return statistics.median(y / x for x, y in zip(medians[a], medians[b]))

    return {
        "model": name, "quantize_s": quantize_s, "compile_s": compile_s,
        "qdq_ops": {k: ops[k] for k in ("QuantizeLinear", "DequantizeLinear", "Conv", "MatMul", "Gemm") if k in ops},
        "kernels": kernels, "vs_ort_int8": worst(vs_on), "vs_ort_reference": worst(vs_off),
        "ort_int8_vs_ort_reference": worst(ort_vs_ort),
        "p50_ms": {n: statistics.median(t) for n, t in zip(engines, times)}, "rounds": rounds, "block": block,
        "int8_over_ort_int8": speedup("lepton-opt int8", "onnxruntime int8"),
        "int8_over_ort_fp32": speedup("lepton-opt int8", "onnxruntime fp32"),
    }


def _print(row: dict) -> None:
    k = row["kernels"]
    print(f"{row['model']}: quantize_static {row['quantize_s']:.0f} s, compile {row['compile_s']:.0f} s; "
          f"{k['int8_conv']} int8 conv + {k['int8_dense']} int8 dense kernels, "
          f"{k['float_conv2d']} float conv2d and {k['float_matmul']} float matmul left")
    for label, key in (("vs onnxruntime int8 (optimized)", "vs_ort_int8"),
                       ("vs onnxruntime, QDQ reference semantics", "vs_ort_reference"),
                       ("onnxruntime int8 itself vs the reference semantics", "ort_int8_vs_ort_reference")):
        for out, e in row[key].items():
            steps = "" if e["steps"] is None else f" ({e['steps']:.2f} output steps)"
            print(f"  {label}: {out} max abs {e['max_abs']:.3g}{steps}, cosine {e['cosine']:.6f}")
    p50 = ", ".join(f"{n} {t:.2f} ms" for n, t in row["p50_ms"].items())
    print(f"  p50: {p50}; lepton-opt int8 is {row['int8_over_ort_int8']:.2f}x onnxruntime int8 and "
          f"{row['int8_over_ort_fp32']:.2f}x onnxruntime fp32 (speed-up, paired by round)")


def main(argv=None) -> int:
    args = _parse(argv)
    sys.path.insert(0, str(HERE))
    from lepton_opt.evaluation.latency import set_runtime_threads

    set_runtime_threads(args.threads)
    rows = []
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        row = measure(name, args.model_dir, args.threads, args.duration)
        _print(row)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
