"""What the fusion passes do to real exported models: graph size, onnxruntime latency, compiled latency.

For each benchmark model (``benchmarks/results/models/<name>.onnx``, exported by ``models.py``):

1. ``-O2`` (simplification + fusions): node counts and the op histogram before / after,
   optimization time, max abs difference of the -O2 model's outputs from the original's under
   onnxruntime.
2. onnxruntime latency of the original and of the -O2 model, 2 threads each, timed interleaved
   (one run of each, repeated, after warm-up; medians), with onnxruntime's own graph
   optimizations on (what users deploy) and off (what the graph itself costs).
3. Compiled latency (lepton-opt, default CPU schedules) of the build without graph passes
   (``fp32-O0``) and of the default build (``fp32``, -O2), measured by ``lepton_opt.benchmark``
   against onnxruntime in one interleaved run: the speed-up of -O2 over -O0 is paired by round.
4. With ``--kernels``: milliseconds per run of each kernel of the two builds (profiled in turn),
   to see where the difference comes from.

    python benchmarks/fusion.py [--models bert_base,vit_small] [--threads 2] [--repeat 30]
        [--duration 60] [--kernels] [--no-compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bert_base,vit_small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--model-dir", type=Path, default=HERE / "results" / "models")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of interleaved timing of the compiled builds per model")
    parser.add_argument("--kernels", action="store_true", help="per-kernel profile of the -O0 and -O2 builds")
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


def _kernel_group(symbol: str) -> str:
    """``fused_matmul3_add4_..._prepacked`` and ``fused_matmul1_add2_...`` alike: numbers that
    TVM appends to tell functions apart dropped, so the same kernel matches across builds."""
    return re.sub(r"\d+(?=_|$)", "", symbol)


def kernel_table(path: Path, feeds, runs: int) -> dict[str, dict[str, float]]:
    """Kernel group -> {"O0": ms per run, "O2": ms per run}, both builds profiled in turn."""
    import lepton_opt
    from lepton_opt.targets.profiling import profile_kernels

    builds = {level: lepton_opt.compile(str(path), level=level) for level in ("O0", "O2")}
    table: dict[str, dict[str, float]] = {}
    for level, profile in zip(builds, profile_kernels(list(builds.values()), feeds, runs)):
        for symbol, (seconds, _calls) in profile.items():
            if symbol.startswith("vm.builtin"):
                continue
            entry = table.setdefault(_kernel_group(symbol), {"O0": 0.0, "O2": 0.0})
            entry[level] += seconds * 1e3
    return dict(sorted(table.items(), key=lambda kv: -max(kv[1].values())))


def print_kernels(name: str, table: dict[str, dict[str, float]], top: int = 12) -> None:
    print(f"[{name}] kernels, ms per run (total -O0 {sum(t['O0'] for t in table.values()):.2f}, "
          f"-O2 {sum(t['O2'] for t in table.values()):.2f}):")
    for group, t in list(table.items())[:top]:
        print(f"    {t['O0']:8.3f} {t['O2']:8.3f}  {group}")


def main(argv=None) -> int:
    args = _parse(argv)
    from lepton_opt.evaluation.latency import set_runtime_threads

    set_runtime_threads(args.threads)
    import numpy as np

    import lepton_opt
    from lepton_opt.evaluation.accuracy import ort_session, random_feeds
    from lepton_opt.passes.base import input_specs

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
            bench = lepton_opt.benchmark(str(path), variants="ort,fp32-O0,fp32", threads=args.threads,
                                         duration=args.duration, memory=False)
            batch = bench.batches[0]
            row["compiled"] = {v.name: {"p50_ms": v.latency[batch].p50, "speedup_vs_ort": bench.speedup(v.name),
                                        "max_abs_err": v.accuracy and v.accuracy.max_abs}
                               for v in bench.variants if v.ok}
            row["compiled_O2_vs_O0"] = bench.speedup("fp32", baseline="fp32-O0")
            row["compiled_rounds"] = bench.rounds[batch]
            c = row["compiled"]
            print(f"[{name}] compiled, {row['compiled_rounds']} interleaved rounds: "
                  f"-O0 {c['fp32-O0']['p50_ms']:.2f} ms "
                  f"({c['fp32-O0']['speedup_vs_ort']:.2f}x of onnxruntime), -O2 {c['fp32']['p50_ms']:.2f} ms "
                  f"({c['fp32']['speedup_vs_ort']:.2f}x); -O2 over -O0, paired by round: "
                  f"{row['compiled_O2_vs_O0']:.2f}x", flush=True)
        if args.kernels:
            row["kernels"] = kernel_table(path, feeds, args.repeat)
            print_kernels(name, row["kernels"])
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
