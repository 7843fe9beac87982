"""A short seeded run of the model fuzzer (benchmarks/fuzz.py, issue 23): 40 mutated models,
each through `lepton-opt inspect`, `optimize` and `compile` in a child process with time and
memory limits; every outcome must be a success (checked against onnxruntime) or one `error:`
line. Also checks that the harness itself sees what it must call a bug (a signal, a hang, a
traceback, a messy error, a wrong result). The campaign figures are in benchmarks/README.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "benchmarks" / "fuzz.py"


def test_seeded_short_fuzz_run_finds_no_bug(tmp_path):
    result = subprocess.run([sys.executable, str(FUZZ), "--quick", "--mutations", "40", "--seed", "0",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    summary = json.loads((tmp_path / "summary.json").read_text())
    bugs = "\n".join(f"{b['seed']} {b['kind']} ({b['mutation']}): {b['command']} -> {b['outcome']}\n{b['stderr']}"
                     for b in summary["bugs"])
    assert result.returncode == 0 and not summary["bugs"], bugs or result.stderr[-3000:]
    assert summary["mutations"] == 40
    assert len(summary["per_kind"]) >= 8  # the mutations spread over the kinds
    runs = sum(v for kind in summary["per_kind"].values() for k, v in kind.items() if "-check:" not in k)
    assert runs == 3 * 40
    assert "bugs: 0" in result.stdout and "inspect" in result.stdout


_HARNESS = """
import json, os, signal, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import fuzz

folder = Path(tempfile.mkdtemp())
def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)
def hang():
    time.sleep(60)
def hog():
    return len(bytearray(3 << 30))
def raises():
    raise RuntimeError("boom")
def messy():
    print("some library noise", file=sys.stderr)
    print("error: a user error", file=sys.stderr)
    return 2
def clean():
    print("warning: fine", file=sys.stderr)
    print("error: a user error", file=sys.stderr)
    return 2
def internal():
    print("internal error: KeyError: 'x' (this is a lepton-opt bug; ...)", file=sys.stderr)
    return 1
out = {name: fuzz.classify(fuzz.forked(fn, 2.0, 1 << 30, folder))
       for name, fn in [("segfault", segfault), ("hang", hang), ("hog", hog), ("raises", raises),
                        ("messy", messy), ("clean", clean), ("internal", internal), ("ok", lambda: 0)]}
import numpy as np
out["compare"] = [fuzz.compare({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.5])}).split(":")[0],
                  fuzz.compare({"y": np.array([np.nan, 2.0])}, {"y": np.array([0.0, 2.0])}).split(":")[0],
                  fuzz.compare({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.0])}),
                  fuzz.compare({"y": np.zeros((2, 3))}, {"y": np.zeros((3, 2))}).split(":")[0]]
print(json.dumps(out))
"""


def test_the_harness_tells_bugs_from_allowed_outcomes():
    result = subprocess.run([sys.executable, "-c", _HARNESS, str(FUZZ.parent)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"segfault": "crash", "hang": "hang", "hog": "traceback", "raises": "traceback",
                   "messy": "messy-error", "clean": "user-error", "internal": "internal-error", "ok": "ok",
                   "compare": ["mismatch", "nonfinite-mismatch", "match", "mismatch"]}
