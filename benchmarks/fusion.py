"""What the fusion passes do to real exported models: graph size, onnxruntime latency, compiled latency.

For each benchmark model (``benchmarks/results/models/<name>.onnx``, exported by ``models.py``):

1. ``-O1`` (simplification only) and ``-O2`` (simplification + fusions): node counts and the op
   histogram before / after, optimization time, max abs difference of the -O2 model's outputs
   from the original's under onnxruntime.
2. onnxruntime latency of the original and of the -O2 model, 2 threads each, timed interleaved
   (one run of each, repeated, after warm-up; medians), with onnxruntime's own graph
   optimizations on (what users deploy) and off (what the graph itself costs).
3. Compiled (lepton-opt, default CPU schedules) latency of the model prepared with -O1 and with
   -O2, each timed against onnxruntime on the original model with
   ``lepton_opt.bench.latency.compare_latency`` (as ``latency.py`` does): the ratio to
   onnxruntime in the same run is the figure to compare between the two.

    python benchmarks/fusion.py [--models bert_base,mobilenet_v2] [--threads 2] [--repeat 30]
        [--no-compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bert_base,mobilenet_v2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--model-dir", type=Path, default=HERE / "results" / "models")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled-latency part")
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def interleaved_ms(engines, feeds, repeat: int, warmup: int) -> list[float]:
    """Median ms per engine, runs interleaved so that machine load hits all alike."""
    for _ in range(warmup):
        for session in engines:
            session.run(None, feeds)
    times = [[] for _ in engines]
    for _ in range(repeat):
        for i, session in enumerate(engines):
            start = time.perf_counter()
            session.run(None, feeds)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def main(argv=None) -> int:
    args = _parse(argv)
    from lepton_opt.bench.latency import compare_latency, set_runtime_threads

    set_runtime_threads(args.threads)
    import numpy as np

    import lepton_opt
    from lepton_opt.bench.accuracy import ort_session, random_feeds
    from lepton_opt.ir.load import load_model
    from lepton_opt.passes.base import PassManager, input_specs
    from lepton_opt.passes.registry import build_passes, pipeline_names
    from lepton_opt.targets.build import resolve_target
    from lepton_opt.targets.compile import compile_model

    rows = []
    for name in args.models.split(","):
        path = args.model_dir / f"{name}.onnx"
        if not path.exists():
            print(f"[{name}] {path} missing: export it with benchmarks/models.py", flush=True)
            continue
        original = path.read_bytes()
        row = {"model": name}
        start = time.perf_counter()
        result = lepton_opt.optimize(str(path), "O2")
        row["optimize_s"] = time.perf_counter() - start
        row["nodes_before"], row["nodes_after"] = result.nodes_before, result.nodes_after
        row["ops_before"], row["ops_after"] = result.ops_before, result.ops_after
        row["rewrites"] = {r.name: r.rewrites for r in result.table
                           if r.rewrites and r.name.startswith(("fuse", "fold-b"))}
        optimized = result.model.SerializeToString()
        feeds = random_feeds(input_specs(result.ir_model), seed=0)
        reference = ort_session(original).run(None, feeds)
        fused = ort_session(optimized).run(None, feeds)
        row["max_abs_err_ort"] = float(max(np.abs(a - b).max() for a, b in zip(reference, fused)))
        print(f"[{name}] {row['nodes_before']} -> {row['nodes_after']} nodes in {row['optimize_s']:.1f} s; "
              f"fusions {row['rewrites']}; onnxruntime max abs diff {row['max_abs_err_ort']:.1e}", flush=True)

        for optimize in (True, False):
            sessions = [ort_session(original, threads=args.threads, optimize=optimize),
                        ort_session(optimized, threads=args.threads, optimize=optimize)]
            before, after = interleaved_ms(sessions, feeds, args.repeat, args.warmup)
            key = "ort_opt" if optimize else "ort_noopt"
            row[key] = {"original_ms": before, "O2_ms": after}
            print(f"[{name}] onnxruntime (graph optimizations {'on' if optimize else 'off'}): "
                  f"original {before:.2f} ms, -O2 {after:.2f} ms", flush=True)
            del sessions

        if not args.no_compile:
            spec = resolve_target("llvm")
            for level in ("O1", "O2"):
                loaded = load_model(str(path))
                names = pipeline_names(level)
                PassManager(build_passes(names))(loaded.model)
                start = time.perf_counter()
                compiled = compile_model(loaded.model, spec, source=loaded.source, sha256=loaded.sha256,
                                         opset=loaded.opset, passes=names)
                compile_s = time.perf_counter() - start
                got = compiled.run(feeds)
                err = float(max(np.abs(got[o.name] - r).max()
                                for o, r in zip(ort_session(original).get_outputs(), reference)))
                timing = compare_latency(compiled, original, feeds, threads=args.threads, repeat=args.repeat,
                                         warmup=args.warmup)
                row[f"compiled_{level}"] = {"lepton_ms": timing.lepton_ms, "ort_ms": timing.ort_ms,
                                            "ratio": timing.ratio, "compile_s": compile_s, "max_abs_err": err}
                print(f"[{name}] compiled after -{level}: {timing.line()}; compile {compile_s:.0f} s; "
                      f"max abs err {err:.1e}", flush=True)
                del compiled, loaded
        rows.append(row)

    print()
    for r in rows:
        print(f"## {r['model']}: {r['nodes_before']} -> {r['nodes_after']} nodes")
        ops = sorted(set(r["ops_before"]) | set(r["ops_after"]))
        print("| op | before | after |\n|---|---:|---:|")
        for op in ops:
            b, a = r["ops_before"].get(op, 0), r["ops_after"].get(op, 0)
            if b != a:
                print(f"| {op} | {b} | {a} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
