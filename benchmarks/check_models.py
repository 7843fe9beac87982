"""Accuracy and build check on the benchmark models, as torch exports them.

For every model in ``benchmarks/models.py`` (CNNs, a detector, transformers), exported with a
static batch and with a dynamic batch dimension: compile for the CPU and compare with
onnxruntime on seeded inputs (batch 1 and 2 for the dynamic export; max abs error must be
<= --atol, or --rtol times the largest output magnitude when that is larger), then cross-compile for CUDA (needs nvcc, no GPU) and check the library holds a
CUDA module.

    python benchmarks/check_models.py [--only mobilenet_v2,bert_base] [--no-cuda] [--cuda-arch sm_80]
        [--model-dir benchmarks/results/models]

Needs torch (``pip install torch==2.13.0``, the CPU wheel) to export the models.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    import models as bench_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(bench_models.MODELS)}")
    parser.add_argument("--model-dir", type=Path, default=HERE / "results" / "models")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--rtol", type=float, default=1e-5,
                        help="tolerance relative to the largest output magnitude, when that is larger")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA cross-compile")
    parser.add_argument("--cuda-arch", default="sm_80")
    args = parser.parse_args(argv)

    import numpy as np

    import lepton_opt
    from lepton_opt.evaluation.accuracy import random_feeds

    names = args.only.split(",") if args.only else list(bench_models.MODELS)
    rows, failed = [], False
    for name in names:
        for dynamic in (False, True):
            variant = f"{name}{'_dynbatch' if dynamic else ''}"
            path = args.model_dir / f"{variant}.onnx"
            if not path.exists():
                bench_models.export(name, path, dynamic_batch=dynamic)
            start = time.perf_counter()
            compiled = lepton_opt.compile(path, target="llvm")
            compile_s = time.perf_counter() - start
            errors, scales = [], []
            for batch in ((1, 2) if dynamic else (1,)):
                spec = bench_models.MODELS[name]
                feeds = {n: t.numpy() for n, t in zip(spec.input_names,
                                                      bench_models.example_inputs(name, batch=batch, seed=7))}
                if not feeds:
                    feeds = random_feeds(compiled.inputs, seed=batch, dims={"batch": batch})
                # Outputs in large units (YOLO boxes in pixels) get the tolerance scaled by their
                # magnitude: float32 rounding alone exceeds a fixed 1e-4 there, in onnxruntime too.
                scale = max(float(np.abs(v).max()) for v in compiled.run(feeds).values())
                tolerance = max(args.atol, args.rtol * scale)
                report = lepton_opt.verify(compiled, path, feeds=feeds, atol=tolerance, rtol=0)
                errors.append(max(o.max_abs for o in report.outputs))
                scales.append(scale)
                failed |= not report.ok
            cuda = "skipped"
            if not args.no_cuda:
                start = time.perf_counter()
                built = lepton_opt.compile(path, target="cuda", cuda_arch=args.cuda_arch)
                ok = "cuda" in built.imported_module_kinds()
                cuda = f"{'ok' if ok else 'NO CUDA MODULE'} ({time.perf_counter() - start:.0f} s)"
                failed |= not ok
            ok = all(e <= max(args.atol, args.rtol * s) for e, s in zip(errors, scales))
            rows.append((variant, compile_s, max(errors), max(scales), ok, cuda))
            print(f"[{variant}] cpu compile {compile_s:.1f} s, max abs err {max(errors):.1e} "
                  f"(max |output| {max(scales):.1e}, {'ok' if ok else 'FAIL'}), cuda {args.cuda_arch}: {cuda}",
                  flush=True)

    print()
    print(f"| model | CPU compile (s) | max abs err vs onnxruntime | max abs output | within tolerance "
          f"| CUDA {args.cuda_arch} build |")
    print("|---|---:|---:|---:|---|---|")
    for variant, compile_s, err, scale, ok, cuda in rows:
        print(f"| {variant} | {compile_s:.1f} | {err:.1e} | {scale:.1e} | {'yes' if ok else 'NO'} | {cuda} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
