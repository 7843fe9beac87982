"""Untuned lepton-opt CPU latency against onnxruntime, measured in the same run.

For each benchmark model (exported by ``benchmarks/models.py``; needs torch): compile with
``lepton_opt.compile(target="llvm")`` (default schedules, no tuning), check the outputs against
onnxruntime, then time both engines interleaved on the same inputs -- one lepton-opt run, one
onnxruntime run, repeated -- after warm-up, each with the same number of threads. Reports
medians and the ratio lepton-opt / onnxruntime (below 1 = lepton-opt is faster). onnxruntime's
idle threads busy-wait by default, which would slow the interleaved lepton-opt runs: it is timed
interleaved with spinning off, and once more on its own with spinning on; the ratio is against
the faster of the two.

    python benchmarks/latency.py [--models mobilenet_v2,bert_base] [--threads 2] [--repeat 50]
        [--model-dir benchmarks/results/models] [--json out.json]

Other processes on the machine disturb both engines alike; the ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,bert_base",
                        help="comma-separated benchmark models (see benchmarks/models.py)")
    parser.add_argument("--threads", type=int, default=2, help="threads for each engine")
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per engine")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per engine first")
    parser.add_argument("--model-dir", type=Path, default=HERE / "results" / "models",
                        help="where exported .onnx files are cached")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    # The TVM thread pool reads this when it starts: set it before lepton_opt loads TVM.
    from lepton_opt.evaluation.latency import compare_latency, set_runtime_threads
    from lepton_opt.bench.runner import cpu_name

    set_runtime_threads(args.threads)
    sys.path.insert(0, str(HERE))
    import lepton_opt
    import models as bench_models

    results = []
    for name in args.models.split(","):
        path = args.model_dir / f"{name}.onnx"
        if not path.exists():
            print(f"[{name}] exporting to {path} ...", flush=True)
            bench_models.export(name, path)
        start = time.perf_counter()
        compiled = lepton_opt.compile(str(path), target="llvm")
        compile_s = time.perf_counter() - start

        spec = bench_models.MODELS[name]
        feeds = {n: t.numpy() for n, t in zip(spec.input_names, bench_models.example_inputs(name))}
        report = lepton_opt.verify(compiled, str(path), feeds=feeds)
        timing = compare_latency(compiled, path.read_bytes(), feeds, threads=args.threads,
                                 repeat=args.repeat, warmup=args.warmup)
        row = {
            "model": name,
            "lepton_ms": timing.lepton_best_ms,
            "ort_ms": timing.ort_best_ms,
            "ort_no_spin_interleaved_ms": timing.ort_ms,
            "ort_spinning_alone_ms": timing.ort_spinning_ms,
            "compile_s": compile_s,
            "max_abs_err": max(o.max_abs for o in report.outputs),
            "ok": report.ok,
        }
        row["ratio"] = timing.ratio
        results.append(row)
        print(f"[{name}] lepton-opt {row['lepton_ms']:.2f} ms, onnxruntime {row['ort_ms']:.2f} ms, "
              f"ratio {row['ratio']:.2f}x; compile {compile_s:.1f} s; max abs err {row['max_abs_err']:.1e}",
              flush=True)

    print()
    print(f"Machine: {cpu_name()}, {args.threads} threads per engine, {args.repeat} interleaved runs, medians")
    print("| model | lepton-opt (ms) | onnxruntime, no spinning, interleaved (ms) | onnxruntime, spinning, "
          "alone (ms) | ratio to the faster onnxruntime | compile (s) | max abs err |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['lepton_ms']:.2f} | {r['ort_no_spin_interleaved_ms']:.2f} | "
              f"{r['ort_spinning_alone_ms']:.2f} | {r['ratio']:.2f}x | "
              f"{r['compile_s']:.0f} | {r['max_abs_err']:.1e} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": cpu_name(), "threads": args.threads,
                                         "results": results}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
