"""Peak resident memory of running one variant, measured in a process of its own.

Variants share the benchmark's process, so its peak RSS says nothing about any one of them.
Each is loaded and run in a fresh Python process that imports only its engine (onnxruntime, or
lepton-opt's TVM runtime), records its RSS after the imports, loads the model or artifact, runs
it a few times, and reports its peak RSS. ``added_mb`` (peak minus the after-imports RSS) is the
figure to compare across engines; ``peak_mb`` is what the process needed in all.

    python -m lepton_opt.bench.memory {onnxruntime|lepton-opt} PATH FEEDS.npz THREADS
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

RUNS = 3


@dataclasses.dataclass
class MemoryStats:
    peak_mb: float
    added_mb: float


def measure(kind: str, path: Path, feeds_path: Path, threads: int, timeout: float = 900) -> MemoryStats:
    env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "lepton_opt.bench.memory", kind, str(path), str(feeds_path),
                           str(threads)], capture_output=True, text=True, env=env, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe of {path.name} failed: {tail}")
    result = json.loads(lines[-1])
    return MemoryStats(result["peak_kb"] / 1024, (result["peak_kb"] - result["after_imports_kb"]) / 1024)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_kb() -> int:
    return _status_kb("VmRSS") or _peak_kb()


def _peak_kb() -> int:
    """Peak RSS of this process. Linux's VmHWM belongs to the process's own address space;
    getrusage's ru_maxrss survives exec and would report the parent's peak at fork time."""
    peak = _status_kb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


def main(argv: list[str]) -> int:
    kind, path, feeds_path, threads = argv[0], argv[1], argv[2], int(argv[3])
    import numpy as np

    if kind == "onnxruntime":
        from lepton_opt.evaluation.accuracy import ort_session

        imported = _rss_kb()
        session = ort_session(str(path), threads=threads, optimize=True, spinning=False)
        run = session.run
        feeds = dict(np.load(feeds_path))
        for _ in range(RUNS):
            run(None, feeds)
    else:
        from lepton_opt.targets.artifact import load_compiled

        imported = _rss_kb()
        compiled = load_compiled(path)
        feeds = dict(np.load(feeds_path))
        for _ in range(RUNS):
            compiled.run(feeds)
    print(json.dumps({"after_imports_kb": imported, "peak_kb": _peak_kb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
