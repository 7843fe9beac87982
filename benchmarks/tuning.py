"""Tuning, measured: untuned and tuned builds against onnxruntime, record reuse and sharing.

    python benchmarks/tuning.py [--models resnet50,bert_base] [--budget 20m] [--threads 2]
        [--duration 30] [--fresh] [--json out.json]

For each model (the suite's exports, ``models.py``):

1. ``lepton_opt.tune(model, budget=...)`` into this script's own record cache
   (``results/tuning/cache``; ``--fresh`` empties it first), 2 threads per measurement; the
   last 20% of the budget (or less, once every tile is measured) confirms each kernel's best
   four tiles (and its default) inside the whole model.
2. One interleaved ``lepton_opt.benchmark`` run of ``ort`` (onnxruntime, all graph
   optimizations, 2 threads), ``fp32-untuned`` (default schedules) and ``fp32`` (the tuning
   records applied): speed-ups paired by round, in the same run.
3. Reuse: the model compiled twice more from the cache (no tuning); how many kernels took a
   record, and the two builds timed against each other, interleaved.
4. Sharing (``bert_base`` only): ``bert_6layer``, a different model whose kernels all have
   BERT-base's shapes, compiled from BERT-base's records, benchmarked the same way, then tuned
   for a few trials: what it measures is only what BERT-base's run did not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / "results" / "tuning" / "cache"


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,bert_base")
    parser.add_argument("--budget", default="20m", help="tuning budget per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of interleaved timing per benchmark")
    parser.add_argument("--model-dir", type=Path, default=HERE / "results" / "models")
    parser.add_argument("--fresh", action="store_true", help="empty the record cache first")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def _model(name: str, model_dir: Path) -> Path:
    path = model_dir / f"{name}.onnx"
    if not path.exists():
        import models as bench_models

        print(f"[{name}] exporting to {path} ...", flush=True)
        bench_models.export(name, path)
    return path


def _inputs(name: str, seeds) -> dict[str, np.ndarray]:
    import models as bench_models

    spec = bench_models.MODELS[name]
    samples = [bench_models.example_inputs(name, 1, seed=s) for s in seeds]
    return {n: np.concatenate([s[i].numpy() for s in samples]) for i, n in enumerate(spec.input_names)}


def _progress(name: str):
    last = [0.0]

    def report(p) -> None:
        now = time.perf_counter()
        if now - last[0] < 30 and p.current != "starting":
            return
        last[0] = now
        print(f"[{name}] {p.elapsed_s / 60:4.1f} min: {p.trials} trials, {p.tasks_started}/{p.tasks} kernels, "
              f"kernel time {p.default_ms:.2f} -> {p.best_ms:.2f} ms", flush=True)

    return report


def _bench(name: str, path: Path, threads: int, duration: float) -> dict:
    import lepton_opt

    result = lepton_opt.benchmark(path, variants="ort,fp32-untuned,fp32", threads=threads, duration=duration,
                                  data=_inputs(name, range(4)), memory=False, progress=True)
    p50 = {v.name: v.latency[1].p50 for v in result.variants if v.ok}
    return {"p50_ms": p50, "untuned_vs_ort": result.speedup("fp32-untuned"), "tuned_vs_ort": result.speedup("fp32"),
            "tuned_vs_untuned": result.speedup("fp32", baseline="fp32-untuned"),
            "cosine": {v.name: v.accuracy.cosine for v in result.variants if v.ok and v.accuracy},
            "rounds": result.rounds[1], "block": result.block[1]}


def _reuse(name: str, path: Path) -> dict:
    """Two compiles from the cache, no tuning: kernels tuned, and their latencies interleaved."""
    import lepton_opt
    from lepton_opt.evaluation.latency import time_interleaved

    builds, seconds = [], []
    for _ in range(2):
        start = time.perf_counter()
        builds.append(lepton_opt.compile(path))
        seconds.append(time.perf_counter() - start)
    feeds = _inputs(name, [0])
    calls = [lambda c=c: c.run(feeds) for c in builds]
    times = time_interleaved(calls, 30, warmup=3, shuffle_seed=0, block=4, discard=1)
    ratios = [a / b for a, b in zip(times[0], times[1])]
    tuning = builds[0].manifest["tuning"]
    return {"compile_s": seconds, "kernels_tuned": tuning["kernels_tuned"], "kernels": tuning.get("kernels"),
            "p50_ms": [statistics.median(t) for t in times], "first_over_second": statistics.median(ratios)}


def main(argv=None) -> int:
    args = _parse(argv)
    sys.path.insert(0, str(HERE))
    if args.fresh and CACHE.exists():
        shutil.rmtree(CACHE)
    os.environ["LEPTON_OPT_CACHE"] = str(CACHE)
    from lepton_opt.evaluation.latency import set_runtime_threads

    set_runtime_threads(args.threads)
    import lepton_opt

    rows = []
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        path = _model(name, args.model_dir)
        print(f"[{name}] tuning for {args.budget} ...", flush=True)
        tuned = lepton_opt.tune(path, budget=args.budget, progress=_progress(name))
        row = {"model": name, "budget": args.budget, "trials": tuned.trials, "tune_s": tuned.seconds,
               "kernels": len(tuned.tasks), "kernels_measured_fully": sum(t.measured == t.tiles for t in tuned.tasks),
               "kernel_ms_default": tuned.default_ms, "kernel_ms_tuned": tuned.best_ms,
               "confirmed_in_model": tuned.confirmed,
               "picks_changed_in_model": sum(1 for t in tuned.tasks if t.model_tile and t.model_tile != t.best_tile),
               "bench": _bench(name, path, args.threads, args.duration), "reuse": _reuse(name, path)}
        if name == "bert_base":
            other = _model("bert_6layer", args.model_dir)
            compiled = lepton_opt.compile(other)
            shared = {"kernels_tuned": compiled.manifest["tuning"]["kernels_tuned"],
                      "kernels": compiled.manifest["tuning"].get("kernels"),
                      "bench": _bench("bert_6layer", other, args.threads, args.duration)}
            again = lepton_opt.tune(other, trials=16, confirm=False)
            shared["tune_trials"] = again.trials
            shared["kernels_measured_by_its_own_tuning"] = [t.name for t in again.tasks if t.trials]
            shared["kernels_known_from_bert_base"] = sum(1 for t in again.tasks if not t.trials and t.measured)
            row["bert_6layer"] = shared
        rows.append(row)
        b = row["bench"]
        print(f"[{name}] {row['trials']} trials in {row['tune_s'] / 60:.1f} min; kernel time "
              f"{row['kernel_ms_default']:.2f} -> {row['kernel_ms_tuned']:.2f} ms; {row['confirmed_in_model']} kernels "
              f"confirmed in the model ({row['picks_changed_in_model']} picks changed); speed-up vs onnxruntime: untuned "
              f"{b['untuned_vs_ort']:.2f}x, tuned {b['tuned_vs_ort']:.2f}x (tuned vs untuned {b['tuned_vs_untuned']:.2f}x); "
              f"reuse: {row['reuse']['kernels_tuned']}/{row['reuse']['kernels']} kernels from records, second build "
              f"{row['reuse']['first_over_second']:.3f}x the first", flush=True)
        if "bert_6layer" in row:
            s = row["bert_6layer"]
            print(f"[bert_6layer] {s['kernels_tuned']}/{s['kernels']} kernels from bert_base's records; speed-up vs "
                  f"onnxruntime: untuned {s['bench']['untuned_vs_ort']:.2f}x, with the records "
                  f"{s['bench']['tuned_vs_ort']:.2f}x; its own tuning measured {s['tune_trials']} candidates for "
                  f"{s['kernels_measured_by_its_own_tuning']} and knew {s['kernels_known_from_bert_base']} kernels",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
