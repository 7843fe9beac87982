"""The ``lepton-opt`` command line. Every command calls :mod:`lepton_opt.api`, nothing else.

Exit codes: 0 ok; 1 a check failed (``--verify``, ``--verify-each``, ``debug``, a ``bench``
variant); 2 bad input (one ``error: ...`` line); 3 an internal error (a lepton-opt bug, one
``internal error: ...`` line); 130 interrupted. ``--json`` on every command prints one strict JSON
document on stdout instead of the tables (nothing when the command stops at an error line);
``-q``/``-v`` (on the group or the command) drop the progress, notes and detail tables, or add
lepton-opt's log records.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from lepton_opt.errors import InputError, LeptonError

out = Console()
err = Console(stderr=True)

# The version of every command's --json document (debug's is lepton_opt.debugging.SCHEMA_VERSION,
# the same number): a consumer checks it before reading the fields.
JSON_SCHEMA_VERSION = 1
INTERNAL_ERROR_EXIT_CODE = 3
# Where a stream is not a terminal, no line is wrapped: text is soft-wrapped (never broken) and
# tables are as wide as their content up to this many columns.
_PIPED_WIDTH = 1 << 16
# click's ctx.meta is shared by the group's context and the command's: both take -q/-v.
_VERBOSITY = "lepton_opt.verbosity"
_JSON_STDOUT = "lepton_opt.json_stdout"


def _handle_errors(fn):
    """Every command runs through this: user errors print one `error:` line and exit 2 (or the
    error's own code), anything else is a lepton-opt bug (one `internal error:` line, exit 3). It
    also sets the consoles for where they write, routes library logs (-v) and, with --json, sends
    whatever the command's libraries print on stdout to stderr, so stdout holds the document alone."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _unwrap_when_piped()
        try:
            with warnings.catch_warnings(), _library_logs(_verbosity() == "verbose"), \
                    _json_stdout(kwargs.get("as_json", False)):
                warnings.simplefilter("ignore")
                return fn(*args, **kwargs)
        except LeptonError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except Exception as e:
            if os.environ.get("LEPTON_OPT_DEBUG"):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            err.print(f"[bold red]internal error:[/] {type(e).__name__}: {first} "
                      "(this is a lepton-opt bug; rerun with LEPTON_OPT_DEBUG=1 for the traceback)",
                      highlight=False, soft_wrap=True)
            sys.exit(INTERNAL_ERROR_EXIT_CODE)

    return wrapper


def _unwrap_when_piped() -> None:
    """Piped output is parsed line by line, so it must not be wrapped where rich would wrap it:
    at the terminal's width, or 80 columns without one. Set per invocation: tests invoke
    commands in-process with other streams."""
    for console in (out, err):
        isatty = getattr(console.file, "isatty", None)
        piped = not (isatty is not None and isatty())
        console.soft_wrap = piped
        console.width = _PIPED_WIDTH if piped else None


@contextlib.contextmanager
def _library_logs(verbose: bool):
    """Library log records stay off the terminal: with no logging configured, Python prints
    every warning a library logs to stderr, and onnx-ir logs one per dangling name while it
    reads a malformed model, and a whole traceback when shape inference fails on one (which it
    recovers from). The CLI's promise is one `error:` line. LEPTON_OPT_DEBUG=1 shows them;
    ``verbose`` (-v) prints lepton-opt's own records from INFO up on stderr."""
    root = logging.getLogger()
    quiet = logging.NullHandler()  # a handler on the root: Python's last-resort printer stays idle
    ours = logging.getLogger("lepton_opt")
    shown = logging.StreamHandler(sys.stderr)
    shown.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = ours.level
    if not os.environ.get("LEPTON_OPT_DEBUG"):
        root.addHandler(quiet)
    if verbose:
        ours.addHandler(shown)
        ours.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(quiet)
        ours.removeHandler(shown)
        ours.setLevel(level)


@contextlib.contextmanager
def _json_stdout(as_json: bool):
    """With --json, what the command's libraries print on stdout goes to stderr; :func:`_emit_json`
    writes the document to the real stdout."""
    if not as_json:
        yield
        return
    click.get_current_context().meta[_JSON_STDOUT] = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _emit_json(command: str, facts: dict) -> None:
    """Print ``facts`` as the command's one JSON document: ``schema_version`` and ``command``
    first, numpy values as plain numbers and lists, paths as strings, and strict JSON (a
    non-finite number becomes null, and a line in ``notes`` says where)."""
    nonfinite: list[str] = []
    doc = _plain({"schema_version": JSON_SCHEMA_VERSION, "command": command, **facts}, "", nonfinite)
    if nonfinite:
        shown = ", ".join(nonfinite[:10]) + (f" and {len(nonfinite) - 10} more" if len(nonfinite) > 10 else "")
        doc.setdefault("notes", []).append(f"null stands for a non-finite number (inf or nan) at {shown}")
    stdout = click.get_current_context().meta.get(_JSON_STDOUT, sys.stdout)
    click.echo(json.dumps(doc, indent=2, allow_nan=False), file=stdout)


def _plain(value, where: str, nonfinite: list[str]):
    """``value`` as strict JSON holds it; ``where`` (its path in the document, e.g.
    ``outputs.y.max``) goes to ``nonfinite`` for each inf or nan, which becomes null."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}" if where else str(k), nonfinite) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=str)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", nonfinite) for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), where, nonfinite)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        nonfinite.append(where)
        return None
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"{where}: a {type(value).__name__} has no JSON form")


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value:
        return
    given = ctx.meta.get(_VERBOSITY)
    if given not in (None, param.name):
        raise click.UsageError("-q/--quiet and -v/--verbose exclude each other", ctx)
    ctx.meta[_VERBOSITY] = param.name


def _verbosity() -> str | None:
    """The verbosity asked for: "quiet" (-q), "verbose" (-v) or None, on the group or the command."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.meta.get(_VERBOSITY)


def _quiet() -> bool:
    return _verbosity() == "quiet"


def verbosity_options(fn):
    """-q/--quiet and -v/--verbose: on the group (``lepton-opt -q compile``) and on each command."""
    fn = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_verbosity,
                      help="Also print lepton-opt's log records (INFO and up) on stderr.")(fn)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_verbosity,
                        help="Print the result only: no progress, notes or detail tables (warnings and errors "
                             "still go to stderr).")(fn)


def output_options(fn):
    """--json, -q and -v: what every command takes about its output."""
    fn = verbosity_options(fn)
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout instead of the tables (schema_version 1; "
                             "stderr is unchanged).")(fn)


class _NoStatus:
    def update(self, *_args, **_kwargs) -> None:
        pass


def _status(message: str):
    """A spinner on stderr while a step runs (none with -q); ``update`` changes its text."""
    return contextlib.nullcontext(_NoStatus()) if _quiet() else err.status(message)


def _note(text: str) -> None:
    """An informational line on stderr; -q leaves it out."""
    if not _quiet():
        err.print(f"note: {text}", highlight=False, soft_wrap=True)


def _warn(messages: Iterable[str]) -> None:
    """Warnings go to stderr whatever the verbosity and --json."""
    for message in messages:
        err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _detail(renderable) -> None:
    """A table of detail (per pass, per layer, per kernel, per node kept): left out with -q."""
    if not _quiet():
        out.print(renderable)


def _input_shapes(values: tuple[str, ...]) -> dict[str, list[int]] | None:
    from lepton_opt.ir.load import parse_input_shape

    shapes = dict(parse_input_shape(v) for v in values)
    return shapes or None


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:DIMS",
    help="Fix an input's shape, e.g. input:1x3x224x224 (repeatable). Needed for dynamic dims.")


def precision_options(fn, int8: bool = False):
    """The mixed-precision options shared by ``optimize`` and ``compile`` (which also takes int8)."""
    choices = ["fp16", "bf16", "int8"] if int8 else ["fp16", "bf16"]
    help_text = "Convert to mixed precision after the passes (numerically sensitive ops stay fp32)."
    if int8:
        help_text += (" int8: static int8 quantization (lepton-opt quantize's defaults, calibrated on --data or "
                      "--samples seeded inputs, guarded by --min-cosine) on integer kernels.")
    options = [
        click.option("--precision", type=click.Choice(choices), help=help_text),
        click.option("--keep-io-types/--no-keep-io-types", default=True, show_default=True,
                     help="Keep model inputs and outputs float32 (--precision)."),
        click.option("--op-block-list", metavar="OP,...", help="Op types to keep in fp32, added to the default list."),
        click.option("--node-block-list", metavar="NODE,...", help="Node names to keep in fp32."),
        click.option("--no-default-block-list", is_flag=True,
                     help="Do not keep the default op block list (Exp, Pow, ReduceSum, ...) in fp32."),
        click.option("--max-error", type=float,
                     help="Accuracy guard: largest output error relative to the largest fp32 output value; nodes "
                          "responsible are kept in fp32 until it holds."),
        click.option("--min-cosine", type=float, help="Accuracy guard: smallest cosine similarity to fp32 outputs."),
        click.option("--data", type=click.Path(path_type=Path),
                     help="Calibration inputs for the guard (.npz, one array per input, samples on axis 0)."),
        click.option("--samples", default=8, show_default=True,
                     help="Seeded calibration inputs for the guard when --data is not given."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _precision_kwargs(precision, keep_io_types, op_block_list, node_block_list, no_default_block_list,
                      max_error, min_cosine, data, samples) -> dict:
    names = _names

    given = {"--op-block-list": op_block_list, "--node-block-list": node_block_list, "--max-error": max_error,
             "--min-cosine": min_cosine, "--data": data}
    if precision is None:
        used = [k for k, v in given.items() if v is not None]
        if used or not keep_io_types or no_default_block_list:
            raise LeptonError(f"{', '.join(used) or '--no-keep-io-types and --no-default-block-list'} apply only "
                              "with --precision fp16 or bf16")
        return {}
    if precision == "int8":
        mixed = {"--op-block-list": op_block_list, "--node-block-list": node_block_list, "--max-error": max_error}
        used = [k for k, v in mixed.items() if v is not None]
        used += [] if keep_io_types else ["--no-keep-io-types"]
        used += ["--no-default-block-list"] if no_default_block_list else []
        if used:
            raise LeptonError(f"{', '.join(used)} apply to fp16/bf16; for int8 use --data, --samples and "
                              "--min-cosine, or `lepton-opt quantize` for every quantization option")
        return {"precision": "int8", "data": data, "samples": samples, "min_cosine": min_cosine}
    return {"precision": precision, "keep_io_types": keep_io_types, "op_block_list": names(op_block_list),
            "node_block_list": names(node_block_list), "use_default_block_list": not no_default_block_list,
            "max_error": max_error, "min_cosine": min_cosine, "data": data, "samples": samples}


def _print_precision(result) -> None:
    """What a precision conversion did: counts, the nodes kept in fp32 and why, the guard (its
    warnings: :func:`_warn`)."""
    if not hasattr(result, "plan"):
        _print_quantization(result)
        return
    plan = result.plan
    out.print(f"{plan.precision}: {len(plan.converted)} nodes converted, {len(plan.kept)} kept in fp32, "
              f"{result.weights_converted} weights converted, {result.casts} Casts inserted", highlight=False)
    if plan.kept:
        table = Table(title="kept in fp32")
        for col in ("node", "op", "why"):
            table.add_column(col, overflow="fold")
        rows = list(plan.kept.values())
        for k in rows[:_KEPT_ROWS]:
            table.add_row(k.name, k.op_type, k.reason)
        if len(rows) > _KEPT_ROWS:
            table.add_row(f"... and {len(rows) - _KEPT_ROWS} more", "", "")
        _detail(table)
    guard = result.guard
    if guard is not None:
        what = "max error" if guard.metric == "max_error" else "cosine"
        bound = "<=" if guard.metric == "max_error" else ">="
        fmt = ".4g" if guard.metric == "max_error" else ".6f"
        out.print(f"accuracy guard ({what} {bound} {guard.budget:g}, on {guard.data}): naive {guard.naive:{fmt}} -> "
                  f"{guard.final:{fmt}}, {len(guard.kept)} node(s) kept in fp32 by the guard, "
                  f"{guard.evaluations} candidate(s) scored", highlight=False, soft_wrap=True)


def _print_quantization(result) -> None:
    """What int8 quantization did: nodes quantized per op type, nodes left float and why, the
    guard (its warnings: :func:`_warn`)."""
    counts = ", ".join(f"{op} {n}" for op, n in sorted(result.quantized.items())) or "none"
    how = f"{result.mode}" + (f", {result.method} calibration on {result.calibration}" if result.method else "")
    out.print(f"int8 ({how}): quantized {counts}; {len(result.excluded)} kept float", highlight=False, soft_wrap=True)
    if result.excluded:
        table = Table(title="kept float")
        for col in ("node", "op", "why"):
            table.add_column(col, overflow="fold")
        for k in result.excluded[:_KEPT_ROWS]:
            table.add_row(k.name, k.op_type, k.reason)
        if len(result.excluded) > _KEPT_ROWS:
            table.add_row(f"... and {len(result.excluded) - _KEPT_ROWS} more", "", "")
        _detail(table)
    guard = result.guard
    if guard is not None:
        what = (f"cosine >= {guard.budget:g}" if guard.metric == "cosine"
                else f"accuracy drop <= {guard.budget:g} points")
        fmt = (lambda v: f"{v:.6f}") if guard.metric == "cosine" else (lambda v: f"{v:.2f} points")
        out.print(f"accuracy guard ({what}, on {guard.data}): all quantized {fmt(guard.quantized)} -> "
                  f"{fmt(guard.final)}, {len(guard.kept)} node(s) kept float, {guard.evaluations} model(s) scored",
                  highlight=False, soft_wrap=True)


def _precision_facts(result) -> dict:
    """:func:`_print_precision`'s facts for --json, every node kept listed."""
    if not hasattr(result, "plan"):
        return _quantization_facts(result)
    plan, guard = result.plan, result.guard
    return {
        "precision": plan.precision, "converted_nodes": len(plan.converted),
        "kept": [{"node": k.name, "op": k.op_type, "why": k.reason} for k in plan.kept.values()],
        "weights_converted": result.weights_converted, "casts": result.casts,
        "guard": None if guard is None else {
            "metric": guard.metric, "budget": guard.budget, "data": guard.data, "naive": guard.naive,
            "final": guard.final, "kept": [k.name for k in guard.kept], "evaluations": guard.evaluations},
        "warnings": list(result.warnings),
    }


def _quantization_facts(result) -> dict:
    """:func:`_print_quantization`'s facts for --json, every node kept float listed."""
    guard = result.guard
    return {
        "precision": "int8", "mode": result.mode, "method": result.method, "calibration": result.calibration,
        "quantized": dict(sorted(result.quantized.items())),
        "kept": [{"node": k.name, "op": k.op_type, "why": k.reason} for k in result.excluded],
        "guard": None if guard is None else {
            "metric": guard.metric, "budget": guard.budget, "data": guard.data, "quantized": guard.quantized,
            "final": guard.final, "kept": [k.name for k in guard.kept], "evaluations": guard.evaluations},
        "warnings": list(result.warnings),
    }


_KEPT_ROWS = 25
# compile --verify compares with onnxruntime fp32: mixed precision earns a looser default. An
# int8 build is compared with onnxruntime running the same quantized model (the ONNX semantics):
# rounding in a different order can move a value by a quantization step.
_VERIFY_TOLERANCE = {None: 1e-4, "fp16": 1e-2, "bf16": 5e-2, "int8": 5e-2}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lepton-opt", prog_name="lepton-opt")
@verbosity_options
def main() -> None:
    """lepton-opt: optimize and compile ONNX models for CPU (LLVM) and CUDA with Apache TVM.

    Exit codes: 0 ok, 1 a check failed (--verify, debug, a bench variant), 2 bad input, 3 internal
    error (a lepton-opt bug), 130 interrupted.
    """


@main.command("compile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", default="llvm", show_default=True, help="llvm (alias cpu) or cuda.")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Artifact directory to write [default: MODEL name with .lepton].")
@input_shape_option
@click.option("--mcpu", help="LLVM CPU name to compile for, e.g. x86-64-v3 for a fleet of AVX2 machines (default: the "
                             "host CPU and its features; CUDA builds: their host code).")
@click.option("--mattr", metavar="+FEAT,-FEAT", help="LLVM CPU features to add or remove, e.g. +avx2,+fma or -avx512f.")
@click.option("--cuda-arch", help="CUDA architecture for --target cuda, e.g. sm_80, sm_86, sm_89, sm_90.")
@click.option("--verify", is_flag=True, help="Compare with onnxruntime on seeded inputs; exit 1 beyond tolerance.")
@click.option("--verify-data", type=click.Path(path_type=Path),
              help="Verify on these inputs instead of seeded ones (.npz, one array per input, samples on axis 0; "
                   "implies --verify).")
@click.option("--atol", type=float, help="Absolute tolerance for --verify [default: 1e-4; 1e-2 with --precision fp16, "
                                         "5e-2 with bf16].")
@click.option("--rtol", type=float, help="Relative tolerance for --verify [default: as --atol].")
@click.option("--seed", default=0, show_default=True, help="Seed of the --verify inputs.")
@click.option("--records", "records", multiple=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Tuning records to apply besides the user cache's (a `lepton-opt tune --records` directory; "
                   "repeatable).")
@click.option("--no-cache", is_flag=True, help="Do not apply the tuning records of the user cache.")
@click.option("--no-fallback", is_flag=True,
              help="Fail on nodes that cannot be lowered instead of running them in onnxruntime.")
@functools.partial(precision_options, int8=True)
@output_options
@_handle_errors
def compile_cmd(model, target, output, input_shapes, mcpu, mattr, cuda_arch, verify, verify_data, atol, rtol, seed,
                records, no_cache, no_fallback, as_json, **precision):
    """Compile MODEL (.onnx) into an artifact directory (library + manifest.json)."""
    import lepton_opt

    verify = verify or verify_data is not None
    shapes = _input_shapes(input_shapes)
    precision = _precision_kwargs(**precision)
    default_tolerance = _VERIFY_TOLERANCE[precision.get("precision")]
    atol = default_tolerance if atol is None else atol
    rtol = default_tolerance if rtol is None else rtol
    output = output or Path(model.name).with_suffix(".lepton")
    start = time.perf_counter()
    with _status(f"compiling {model.name} for {target}…"):
        compiled = lepton_opt.compile(model, target, input_shapes=shapes, mcpu=mcpu, mattr=mattr, cuda_arch=cuda_arch,
                                      records=list(records), use_cache=not no_cache, fallback=not no_fallback,
                                      **precision)
    elapsed = time.perf_counter() - start
    _warn(compiled.warnings)
    notes = []
    if verify and compiled.target["kind"] == "cuda":
        notes.append("--verify runs the model; a CUDA build cannot run without a GPU, so the check is skipped "
                     "(verify a --target llvm build instead)")
        _note(notes[-1])
        verify = False
    # Saved before it runs: TVM warns for every constant when it exports an executable that ran.
    compiled.save(output)
    report = None
    if verify:
        with _status("verifying against onnxruntime…"):
            reference = compiled.precision.model if precision.get("precision") == "int8" else model
            report = lepton_opt.verify(compiled, reference, data=verify_data, input_shapes=shapes, seed=seed,
                                       atol=atol, rtol=rtol)
    tuning = compiled.manifest.get("tuning") or {}
    if compiled.precision is not None:
        _warn(compiled.precision.warnings)
    if as_json:
        _emit_json("compile", {
            "model": model, "target": compiled.target, "output": output, "seconds": elapsed,
            "inputs": compiled.inputs, "outputs": compiled.outputs, "tuning": tuning or None,
            "precision": None if compiled.precision is None else _precision_facts(compiled.precision),
            "verify": None if report is None else {
                "ok": report.ok, "atol": atol, "rtol": rtol, "seed": seed, "data": verify_data, "dims": report.dims,
                "outputs": [{"name": o.name, "max_abs": o.max_abs, "max_rel": o.max_rel, "cosine": o.cosine,
                             "nonfinite_mismatch": o.nonfinite_mismatch, "ok": o.ok} for o in report.outputs]},
            "ok": report is None or report.ok, "warnings": compiled.warnings, "notes": notes})
    else:
        if compiled.precision is not None:
            _print_precision(compiled.precision)
        tuned = (f", {tuning['kernels_tuned']} of {tuning['kernels']} kernels from tuning records"
                 if tuning.get("kernels_tuned") else "")
        out.print(f"compiled [bold]{model}[/] for {_describe_target(compiled.target)} in {elapsed:.1f} s{tuned} "
                  f"-> [bold]{output}[/]", highlight=False)
        if report is not None:
            sizes = "".join(f", {dim}={size}" for dim, size in report.dims.items())
            out.print(f"  verified on {verify_data.name if verify_data else f'seeded inputs (seed {seed}{sizes})'}:",
                      highlight=False)
        for line in report.lines() if report is not None else ():
            out.print(f"  {line}", highlight=False)
    if report is not None and not report.ok:
        err.print(f"[bold red]error:[/] outputs differ from onnxruntime beyond atol={atol:g}, rtol={rtol:g}")
        sys.exit(1)


def _describe_target(target: dict) -> str:
    if target["kind"] == "cuda":
        return f"cuda {target.get('cuda_arch')}"
    return f"llvm ({target.get('mcpu', 'generic')})"


@main.command("optimize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Optimized model to write [default: MODEL name with .opt.onnx].")
@click.option("-O", "level", type=click.Choice(["0", "1", "2", "3"]), default="2", show_default=True,
              help="Pipeline: -O0 nothing, -O1 simplification, -O2 + fusions, -O3 + size trade-offs.")
@click.option("--passes", metavar="A,B,...",
              help="Run exactly these passes (comma-separated, to a fixed point) instead of a -O level.")
@input_shape_option
@click.option("--verify-each", is_flag=True,
              help="Run onnxruntime after every pass on seeded inputs; exit 1 naming the first pass that "
                   "moves an output beyond tolerance.")
@click.option("--atol", default=1e-4, show_default=True, help="Absolute tolerance for --verify-each.")
@click.option("--rtol", default=1e-4, show_default=True, help="Relative tolerance for --verify-each.")
@click.option("--seed", default=0, show_default=True, help="Seed of the --verify-each and guard inputs.")
@precision_options
@output_options
@_handle_errors
def optimize_cmd(model, output, level, passes, input_shapes, verify_each, atol, rtol, seed, as_json, **precision):
    """Optimize MODEL (.onnx) into a standard, smaller ONNX model that onnxruntime runs as before."""
    import lepton_opt

    output = _output_path(model, output, ".opt.onnx")
    precision = _precision_kwargs(**precision)
    start = time.perf_counter()
    with _status(f"optimizing {model.name}…") as status:
        progress = (lambda msg: status.update(f"{precision['precision']} accuracy guard: {msg}…")) if precision else None
        result = lepton_opt.optimize(model, f"O{level}", passes=passes, input_shapes=_input_shapes(input_shapes),
                                     verify_each=verify_each, seed=seed, atol=atol, rtol=rtol,
                                     **({**precision, "progress": progress} if precision else {}))
        _save_model(result.ir_model, output, model)
    elapsed = time.perf_counter() - start
    _warn(result.warnings)
    if result.precision is not None:
        _warn(result.precision.warnings)
    if as_json:
        _emit_json("optimize", {
            "model": model, "output": output, "level": None if passes else f"O{level}", "seconds": elapsed,
            "nodes_before": result.nodes_before, "nodes_after": result.nodes_after,
            "ops_before": result.ops_before, "ops_after": result.ops_after,
            "iterations": result.iterations, "converged": result.converged,
            "passes": [{"name": row.name, "runs": row.runs, "rewrites": row.rewrites,
                        "changed": bool(row.rewrites or row.op_delta), "node_delta": row.node_delta,
                        "op_delta": row.op_delta, "seconds": row.seconds} for row in result.table],
            "verified_each": verify_each,
            "precision": None if result.precision is None else _precision_facts(result.precision),
            "warnings": result.warnings})
        return
    table = Table(title=f"{model.name}: {result.nodes_before} -> {result.nodes_after} nodes "
                        f"({result.iterations} round{'s' if result.iterations != 1 else ''}"
                        f"{'' if result.converged else ', stopped at the cap'})")
    for col, justify in (("pass", "left"), ("runs", "right"), ("rewrites", "right"), ("nodes +/-", "right"),
                         ("ops changed", "left"), ("ms", "right")):
        table.add_column(col, justify=justify)
    for row in result.table:
        changed = ", ".join(f"{op} {d:+d}" for op, d in sorted(row.op_delta.items(), key=lambda kv: kv[1]))
        table.add_row(row.name, str(row.runs), str(row.rewrites), f"{row.node_delta:+d}" if row.node_delta else "0",
                      changed or "-", f"{row.seconds * 1e3:.0f}")
    _detail(table)
    if result.precision is not None:
        _print_precision(result.precision)
    checked = " (every pass verified against onnxruntime)" if verify_each else ""
    out.print(f"optimized [bold]{model}[/] -> [bold]{output}[/] in {elapsed:.1f} s{checked}", highlight=False,
              soft_wrap=True)


def _output_path(model: Path, output: Path | None, suffix: str) -> Path:
    """The .onnx file a command writes: ``-o``, else MODEL's name with ``suffix`` (in the current
    directory); never a directory, never the input model."""
    output = output or Path(model.name.removesuffix(".onnx") + suffix)
    if output.exists() and output.is_dir():
        raise LeptonError(f"{output}: is a directory; -o names the .onnx file to write")
    if model.exists() and output.exists() and output.resolve() == model.resolve():
        raise LeptonError(f"{output}: is the input model; choose another -o (the input is never modified)")
    return output


def _save_model(model, output: Path, source: Path) -> None:
    import lepton_opt

    for note in lepton_opt.save_model(model, output, source=source):
        _note(note)


@main.command("auto")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path),
              help="Inputs (.npz, one array per input, samples on axis 0): the first half calibrates, the second "
                   "half judges the candidates. Without it: seeded inputs, output agreement only.")
@click.option("--labels", type=click.Path(path_type=Path), help="One class per sample of --data (.npy): top-1 accuracy.")
@click.option("--eval-data", type=click.Path(path_type=Path),
              help="Held-out inputs to judge on instead of the second half of --data.")
@click.option("--eval-labels", type=click.Path(path_type=Path), help="Labels of --eval-data.")
@click.option("--max-accuracy-drop", type=float, help="Budget: top-1 accuracy points below fp32 (needs labels).")
@click.option("--min-cosine", type=float, help="Budget: smallest cosine similarity of any output to fp32.")
@click.option("--max-error", type=float, help="Budget: largest error relative to the largest fp32 output value.")
@click.option("--budget", default="30m", show_default=True, help="Time for the whole search (90s, 20m, 1h).")
@click.option("--target", "-t", default="llvm", show_default=True, help="llvm (this CPU): candidates are measured here.")
@click.option("--threads", type=int, help="Threads of every engine [default: the cores this process may use].")
@input_shape_option
@click.option("--output", "-o", "output_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the chosen artifact, ONNX model and report [default: MODEL name with .auto].")
@click.option("--seed", default=0, show_default=True, help="Seed of generated inputs.")
@output_options
@_handle_errors
def auto_cmd(model, data, labels, eval_data, eval_labels, max_accuracy_drop, min_cosine, max_error, budget, target,
             threads, input_shapes, output_dir, seed, as_json):
    """The fastest build of MODEL within an accuracy budget: tries fp32, tuned, fp16/bf16, int8 (static,
    dynamic, weight-only), pruned and pruned+int8, measures the ones that meet the budget against
    onnxruntime, keeps the fastest (artifact, ONNX model, report) and prints how to rebuild it."""
    import lepton_opt

    output_dir = output_dir or Path(model.name).with_suffix(".auto")
    with _status(f"searching builds of {model.name}…") as status:
        result = lepton_opt.auto(model, data=data, labels=labels, eval_data=eval_data, eval_labels=eval_labels,
                                 max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine, max_error=max_error,
                                 budget=budget, target=target, threads=threads,
                                 input_shapes=_input_shapes(input_shapes), output_dir=output_dir, seed=seed,
                                 progress=lambda message: status.update(f"auto: {message}…"))
    if as_json:
        _emit_json("auto", result.to_json())
        return
    table = Table(title=f"{model.name}: {result.budget.describe()}; judged on {result.data}")
    for col in ("candidate", "status", result.budget.metric, "ms", "vs ort", "vs fp32", "build s", "notes"):
        table.add_column(col, justify="right" if col in ("ms", "vs ort", "vs fp32", "build s") else "left")
    for c in result.candidates:
        ms = c.median_ms if c.median_ms is not None else c.brief_ms
        table.add_row(("[bold green]" + c.name + "[/]") if c.chosen else c.name, c.status,
                      "" if c.score is None else f"{c.score:.6g}", "" if ms is None else f"{ms:.3f}",
                      "" if c.vs_onnxruntime is None else f"{c.vs_onnxruntime:.2f}",
                      "" if c.vs_fp32 is None else f"{c.vs_fp32:.2f}", "" if c.build_s is None else f"{c.build_s:.1f}",
                      c.reason)
    _detail(table)
    for line in result.notes:
        _note(line)
    out.print(f"chosen: [bold]{result.chosen.name}[/] -- {result.why}", highlight=False)
    out.print(f"wrote {output_dir}/ (model.lepton, model.onnx, report.md, report.html, report.json)", highlight=False)
    out.print(f"replay: {result.chosen.replay}", highlight=False)


@main.command("debug")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp16", "bf16", "int8"]),
              help="Candidate: lepton-opt's mixed-precision conversion (fp16/bf16, emulated as its build computes) "
                   "or int8 quantization (QDQ in onnxruntime); with --compile, a build in that precision.")
@click.option("--passes", metavar="A,B,...", help="Candidate: the model after exactly these lepton-opt passes.")
@click.option("--artifact", type=click.Path(path_type=Path), metavar="DIR",
              help="Candidate: a rebuild of this artifact (its CPU, precision and pipeline) with the values as "
                   "outputs; the artifact itself is run and checked too.")
@click.option("--compile", "build", is_flag=True,
              help="Candidate: a lepton-opt build for this CPU with the values as extra outputs.")
@click.option("--data", type=click.Path(path_type=Path),
              help="Inputs (.npz, one array per input, samples on axis 0): the first batch is compared; int8 "
                   "calibrates on all of it [default: seeded random inputs].")
@click.option("--samples", type=int, help="int8: seeded calibration inputs when --data is not given [default: 32].")
@input_shape_option
@click.option("--atol", type=float, help="Absolute tolerance per value [default: 1e-4; fp16 1e-2; bf16 and int8 5e-2].")
@click.option("--rtol", type=float, help="Relative tolerance per value [default: as --atol].")
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--max-values", default=64, show_default=True,
              help="--compile/--artifact: values marked as build outputs at most (evenly spaced).")
@click.option("--rows", "max_rows", default=10, show_default=True, help="Rows of each table.")
@output_options
@_handle_errors
def debug_cmd(model, precision, passes, artifact, build, data, samples, input_shapes, atol, rtol, seed, max_values,
              max_rows, as_json):
    """Find where MODEL's outputs first go wrong: every intermediate value against onnxruntime fp32.

    Exits 0 when every compared value is within tolerance, 1 when one is not.
    """
    import lepton_opt

    with _status(f"debugging {model.name}…") as status:
        report = lepton_opt.debug(model, precision=precision, passes=passes, artifact=artifact, compile=build,
                                  data=data, samples=samples, input_shapes=_input_shapes(input_shapes), atol=atol,
                                  rtol=rtol, seed=seed, max_values=max_values,
                                  progress=lambda msg: status.update(f"debugging {model.name}: {msg}…"))
    if as_json:
        _emit_json("debug", report.to_dict())
    else:
        _print_debug(report, max_rows)
    if not report.ok:
        sys.exit(1)


def _fmt_error(value: float, fmt: str = ".3g") -> str:
    return "inf" if value == float("inf") else ("nan" if value != value else f"{value:{fmt}}")


def _print_debug(report, max_rows: int) -> None:
    out.print(f"reference: {report.reference}; candidate: {report.candidate}; inputs: {report.inputs}",
              highlight=False, soft_wrap=True)
    out.print(f"{len(report.rows)} of {report.values} values compared"
              + (f" ({len(report.unmatched)} without a counterpart in the candidate)" if report.unmatched else "")
              + f", {len(report.divergent)} beyond atol={report.atol:g}, rtol={report.rtol:g}",
              highlight=False, soft_wrap=True)

    def table(title: str, rows, added: bool) -> None:
        t = Table(title=title)
        for col in ("node", "op", "output", "max abs err", "max rel err", "cosine", "non-finite",
                    *(("err added",) if added else ())):
            t.add_column(col, justify="left" if col in ("node", "op", "output") else "right", overflow="fold")
        for r in rows[:max_rows]:
            extra = (("non-finite" if r.added == float("inf") else f"{r.added:+.3g}"),) if added else ()
            t.add_row(r.node, r.op_type, r.value, _fmt_error(r.max_abs), _fmt_error(r.max_rel),
                      _fmt_error(r.cosine, ".6f"), str(r.nonfinite), *extra)
        if len(rows) > max_rows:
            t.add_row(f"... and {len(rows) - max_rows} more", "", "", "", "", "", "", *(("",) if added else ()))
        _detail(t)

    int8 = report.precision == "int8"
    if report.divergent:
        table("first diverging values, in graph order", report.divergent, int8)
    if int8:
        ranked = sorted((r for r in report.rows if r.added > 0), key=lambda r: -r.added)
        table("error added per node, largest first",
              ranked, True)
    for line in report.notes if not _quiet() else ():
        out.print(f"note: {line}", highlight=False, soft_wrap=True)
    style = "bold green" if report.ok else "bold red"
    out.print(f"[{style}]{'OK' if report.ok else 'DIVERGES'}:[/] {report.verdict}", highlight=False, soft_wrap=True)


@main.command("run")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=FILE.npy",
              help="An input from a .npy file (repeatable). Missing inputs: seeded random data.")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Write each output to OUTPUT_DIR/<name>.npy.")
@click.option("--seed", default=0, show_default=True, help="Seed for inputs not given with --input.")
@click.option("--profile", "profile", is_flag=True,
              help="Then profile the run per kernel: time, share, schedule, GFLOP/s, GB/s and why (CPU builds).")
@click.option("--repeat", default=10, show_default=True, type=click.IntRange(min=1),
              help="Runs the --profile times are averaged over.")
@click.option("--top", default=15, show_default=True, type=click.IntRange(min=1),
              help="Kernels listed by --profile (the JSON lists all).")
@output_options
@_handle_errors
def run_cmd(artifact, inputs, output_dir, seed, profile, repeat, top, as_json):
    """Run a compiled ARTIFACT directory on inputs from .npy files (and profile it: --profile)."""
    import lepton_opt
    from lepton_opt.evaluation.accuracy import random_feeds

    compiled = lepton_opt.load_compiled(artifact)
    feeds, sources = {}, {}
    for item in inputs:
        name, sep, path = item.partition("=")
        if not sep:
            raise InputError(f"--input {item!r}: expected NAME=FILE.npy")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"--input {name}: cannot read {path!r} as a .npy array ({e})") from None
        sources[name] = path
    missing = [spec for spec in compiled.inputs if spec["name"] not in feeds]
    if missing:
        dims = {d: v for f, spec in ((feeds.get(s["name"]), s) for s in compiled.inputs) if f is not None
                for d, v in zip(spec["shape"], np.shape(f)) if isinstance(d, str)}
        feeds.update(random_feeds(missing, seed=seed, dims=dims))
    start = time.perf_counter()
    results = compiled.run(feeds)
    elapsed = time.perf_counter() - start
    notes = ["seeded random data for " + ", ".join(s["name"] for s in missing)] if missing else []
    for note in notes:
        _note(note)
    if output_dir is not None:
        _write_outputs(output_dir, results)
    kernels = None
    if profile:
        with _status(f"profiling {repeat} runs…"):
            kernels = lepton_opt.profile(compiled, feeds=feeds, runs=repeat)
    if as_json:
        _emit_json("run", {
            "artifact": artifact, "seconds": elapsed,
            "inputs": {name: {"shape": list(np.shape(value)), "dtype": str(np.asarray(value).dtype),
                              "file": sources.get(name)} for name, value in feeds.items()},
            "outputs": {name: {"shape": list(value.shape), "dtype": str(value.dtype), **_stats(value),
                               "file": None if output_dir is None else output_dir / _output_filename(name)}
                        for name, value in results.items()},
            "output_dir": output_dir, "notes": notes,
            **({"profile": kernels.to_json()} if kernels is not None else {})})
        return
    table = Table(title=f"{artifact} ({elapsed * 1e3:.2f} ms)")
    for col in ("output", "shape", "dtype", "values"):
        table.add_column(col)
    for name, value in results.items():
        preview = np.array2string(value.reshape(-1)[:6], precision=4, separator=", ")
        table.add_row(name, str(list(value.shape)), str(value.dtype), preview)
    out.print(table)
    if output_dir is not None:
        out.print(f"outputs written to {output_dir}")
    if kernels is not None:
        _print_profile(kernels, top)


@main.command("profile")
@click.argument("model", type=click.Path(path_type=Path))
@input_shape_option
@click.option("--repeat", default=10, show_default=True, type=click.IntRange(min=1),
              help="Runs the times are averaged over.")
@click.option("--top", default=15, show_default=True, type=click.IntRange(min=1),
              help="Kernels listed (the JSON lists all).")
@click.option("--seed", default=0, show_default=True, help="Seed of the inputs.")
@output_options
@_handle_errors
def profile_cmd(model, input_shapes, repeat, top, seed, as_json):
    """Where a run of MODEL (.onnx, compiled here for the CPU, or an artifact directory) spends its
    time, per kernel: share, calls, schedule rule, achieved GFLOP/s and GB/s, and why."""
    import lepton_opt

    with _status(f"compiling and profiling {model.name}…"):
        kernels = lepton_opt.profile(model, runs=repeat, input_shapes=_input_shapes(input_shapes), seed=seed)
    if as_json:
        _emit_json("profile", {"model": model, **kernels.to_json()})
        return
    _print_profile(kernels, top)


def _print_profile(kernels, top: int) -> None:
    """The kernel table, slowest first, and what the machine measurably does."""
    peak = kernels.peak
    table = Table(title=f"kernels: {kernels.seconds * 1e3:.3f} ms per run ({kernels.runs} runs, "
                        f"{kernels.threads} threads)")
    for col in ("kernel", "share", "calls", "ms", "rule", "GFLOP/s", "GB/s", "computes", "why"):
        table.add_column(col, justify="right" if col in ("share", "calls", "ms", "GFLOP/s", "GB/s") else "left")
    for row in kernels.rows[:top]:
        computes = ", ".join(row.values[:2]) + (f" +{len(row.values) - 2}" if len(row.values) > 2 else "")
        table.add_row(row.name, f"{100 * row.share:.1f}%", f"{row.calls:g}", f"{row.seconds * 1e3:.3f}",
                      row.rule or "", "" if row.gflops is None else f"{row.gflops:.1f}",
                      "" if row.gbps is None else f"{row.gbps:.1f}", computes, row.why)
    rest = kernels.rows[top:]
    if rest:
        table.add_row(f"... {len(rest)} more", f"{100 * sum(r.share for r in rest):.1f}%", "", "", "", "", "", "", "")
    out.print(table)
    _note(f"this machine, measured: {peak.gflops:.0f} GFLOP/s (float32 matmul), {peak.gbps:.1f} GB/s from main "
          f"memory, {peak.cache_gbps:.1f} GB/s in cache; times include the profiler's callbacks")


def _stats(value: np.ndarray) -> dict:
    """An output's min, max and mean (None where it is empty or not numbers)."""
    if value.size == 0 or value.dtype.kind not in "biufV":
        return {"min": None, "max": None, "mean": None}
    wide = value.astype(np.float64)  # kind V: ml_dtypes' bfloat16 and float8
    return {"min": float(wide.min()), "max": float(wide.max()), "mean": float(wide.mean())}


def _write_outputs(output_dir: Path, results: dict[str, np.ndarray]) -> None:
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    tmp.chmod(0o755)  # readable by other users, as a directory made with mkdir under the usual umask
    try:
        for name, value in results.items():
            np.save(tmp / _output_filename(name), value)
        if output_dir.exists():
            for f in tmp.iterdir():
                os.replace(f, output_dir / f.name)
            tmp.rmdir()
        else:
            os.replace(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _output_filename(name: str) -> str:
    return ("".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "output") + ".npy"


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@input_shape_option
@output_options
@_handle_errors
def inspect_cmd(model, input_shapes, as_json):
    """Print MODEL's inputs/outputs, op histogram, parameter count and what would not lower."""
    import lepton_opt

    summary = lepton_opt.inspect_model(model, _input_shapes(input_shapes))
    if as_json:
        _emit_json("inspect", {
            "model": summary.source, "opset": summary.opset, "nodes": summary.num_nodes,
            "parameters": summary.num_parameters, "inputs": summary.inputs, "outputs": summary.outputs,
            "ops": summary.op_histogram, "unsupported": summary.unsupported, "lowers": not summary.unsupported})
        return
    out.print(f"[bold]{summary.source}[/]  opset {summary.opset}, {summary.num_nodes} nodes, "
              f"{summary.num_parameters:,} parameters", highlight=False)
    io = Table(title="inputs and outputs")
    for col in ("kind", "name", "shape", "dtype"):
        io.add_column(col)
    for kind, values in (("input", summary.inputs), ("output", summary.outputs)):
        for v in values:
            shape = "?" if v["shape"] is None else "x".join(str(d) for d in v["shape"]) or "scalar"
            io.add_row(kind, v["name"], shape, v["dtype"])
    out.print(io)
    ops = Table(title="ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op_type, count in summary.op_histogram.items():
        ops.add_row(op_type + (" [red](unsupported)[/]" if op_type in summary.unsupported else ""), str(count))
    out.print(ops)
    if summary.unsupported:
        out.print("[bold red]would not lower[/] (compile runs these in onnxruntime; --no-fallback refuses): "
                  + "; ".join(
            f"{op} ({', '.join(nodes[:5])}{', …' if len(nodes) > 5 else ''})"
            for op, nodes in summary.unsupported.items()), highlight=False)
    else:
        out.print("every op has a converter", highlight=False)


@main.command("prune")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--method", "-m", type=click.Choice(["magnitude", "channel", "2:4"]), default="channel",
              show_default=True, help="channel: remove whole output channels (faster everywhere); magnitude: "
              "zero single weights (smaller when compressed); 2:4: 2 of every 4 weights (sparse tensor cores).")
@click.option("--sparsity", "-s", type=float, help="Share of channels to remove (channel) or weights to zero "
              "(magnitude); with a budget, the largest per-layer share the scan may choose [default 0.9].")
@click.option("--scope", type=click.Choice(["global", "layer"]), default="global", show_default=True,
              help="magnitude: one threshold over all layers, or the same share in each.")
@click.option("--criterion", type=click.Choice(["l1", "l2"]), default="l1", show_default=True,
              help="channel: norm of a channel's weights that ranks it.")
@click.option("--channel-multiple", default=8, show_default=True,
              help="channel: round the channels kept to a multiple of this (1: exact share); kernels tile "
                   "channels by 8 or 16, and onnxruntime runs odd counts slower.")
@click.option("--layers", metavar="PATTERN,...", help="Prune only nodes or weights matching these shell patterns.")
@click.option("--max-error", type=float, help="Budget: largest output error relative to the largest reference "
              "value; a sensitivity scan picks per-layer ratios.")
@click.option("--max-accuracy-drop", type=float, help="Budget: top-1 accuracy points (needs --data and --labels).")
@click.option("--data", type=click.Path(path_type=Path), help="Calibration inputs (.npz, one array per input, "
              "samples on axis 0) [default: seeded random inputs].")
@click.option("--labels", type=click.Path(path_type=Path), help="Class labels (.npy) for --max-accuracy-drop.")
@click.option("--samples", default=8, show_default=True, help="Seeded calibration inputs when --data is not given.")
@input_shape_option
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Pruned model to write [default: MODEL name with .pruned.onnx].")
@output_options
@_handle_errors
def prune_cmd(model, method, sparsity, scope, criterion, channel_multiple, layers, max_error, max_accuracy_drop, data, labels,
              samples, input_shapes, output, as_json):
    """Prune MODEL (.onnx) and write a standard ONNX model; print what each layer lost."""
    import lepton_opt

    output = _output_path(model, output, ".pruned.onnx")
    patterns = [p.strip() for p in layers.split(",") if p.strip()] if layers else None
    with _status(f"pruning {model.name}{' (sensitivity scan)' if max_error or max_accuracy_drop else ''}…"):
        result = lepton_opt.prune(model, method, sparsity, scope=scope, criterion=criterion,
                                  channel_multiple=channel_multiple, layers=patterns,
                                  max_error=max_error, max_accuracy_drop=max_accuracy_drop, data=data,
                                  labels=labels, samples=samples, input_shapes=_input_shapes(input_shapes))
        _save_model(result.model, output, model)

    def scan_error(row) -> float | None:
        """The scan's error for the share it chose for this layer (None without a scan)."""
        scanned = result.scan.sensitivity.get(row.name, {}) if result.scan else {}
        chosen = result.scan.ratios.get(row.name) if result.scan else None
        return scanned.get(chosen)

    if as_json:
        scan = result.scan
        _emit_json("prune", {
            "model": model, "output": output, "method": method, "requested": result.requested,
            "achieved": result.achieved,
            "layers": [{"name": row.name, "op": row.op, "shape_before": row.shape_before,
                        "shape_after": row.shape_after, "ratio": row.ratio, "scan_error": scan_error(row)}
                       for row in result.layers],
            "skipped": [{"name": name, "why": why} for name, why in result.skipped],
            "params_before": result.params_before, "params_after": result.params_after,
            "nonzero_after": result.nonzero_after, "bytes_before": result.bytes_before,
            "bytes_after": result.bytes_after, "compressed_before": result.compressed_before,
            "compressed_after": result.compressed_after,
            "scan": None if scan is None else {"metric": scan.metric, "budget": scan.budget, "achieved": scan.achieved,
                                               "evaluations": scan.evaluations, "ratios": scan.ratios},
            "notes": [result.hardware]})
        return
    table = Table(title=f"{model.name}: {method} pruning")
    for col in ("layer", "op", "shape before", "after", "pruned", "scan error"):
        table.add_column(col, justify="left" if col in ("layer", "op") else "right")
    for row in result.layers:
        error = scan_error(row)
        table.add_row(row.name, row.op, "x".join(map(str, row.shape_before)), "x".join(map(str, row.shape_after)),
                      f"{100 * row.ratio:.1f}%", "" if error is None else f"{error:.3g}")
    _detail(table)
    for name, why in result.skipped if not _quiet() else ():
        out.print(f"left alone: {name}: {why}", highlight=False, soft_wrap=True)
    unit = "channels removed" if method == "channel" else "weights zeroed"
    asked = (f"the scan chose per-layer shares up to {100 * result.requested:.0f}%" if result.scan
             else f"asked {100 * result.requested:.0f}%")
    out.print(f"{unit}: {100 * result.achieved:.1f}% of the prunable ones ({asked}); parameters {result.params_before:,} -> "
              f"{result.params_after:,} ({result.nonzero_after:,} non-zero); file {result.bytes_before / 2**20:.2f} -> "
              f"{result.bytes_after / 2**20:.2f} MiB, compressed {result.compressed_before / 2**20:.2f} -> "
              f"{result.compressed_after / 2**20:.2f} MiB", highlight=False, soft_wrap=True)
    if result.scan:
        out.print(f"scan: {result.scan.metric} {result.scan.achieved:.4g} within budget {result.scan.budget:g} "
                  f"({result.scan.evaluations} onnxruntime evaluations)", highlight=False)
    if not _quiet():
        out.print(f"note: {result.hardware}", highlight=False, soft_wrap=True)
    out.print(f"pruned [bold]{model}[/] -> [bold]{output}[/]", highlight=False, soft_wrap=True)


@main.command("quantize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Quantized model to write [default: MODEL name with .int8.onnx].")
@click.option("--mode", type=click.Choice(["static", "dynamic", "weight-only"]), default="static", show_default=True,
              help="static: calibrated QDQ (int8 kernels for Conv/MatMul/Gemm); dynamic: activations quantized at "
                   "run time (MatMul/Gemm); weight-only: int8 weights, float compute.")
@click.option("--data", type=click.Path(path_type=Path), help="Calibration inputs (.npz, one array per input, "
              "samples on axis 0) [default: seeded random inputs, with a warning].")
@click.option("--calibration-samples", "samples", default=32, show_default=True,
              help="Seeded calibration inputs when --data is not given.")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="Calibration: full range, a percentile of |x|, or KL-divergence (entropy).")
@click.option("--percentile", default=99.999, show_default=True, help="For --method percentile.")
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
@click.option("--activation-type", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True)
@click.option("--symmetric-activations", is_flag=True, help="Activation zero point 0 (default: asymmetric).")
@click.option("--op-types", metavar="OP,...", help="Op types to quantize [default: Conv,MatMul,Gemm; "
              "dynamic and weight-only: MatMul,Gemm].")
@click.option("--exclude-nodes", metavar="NODE,...", help="Node names to keep float.")
@click.option("--exclude-op-types", metavar="OP,...", help="Op types to keep float.")
@click.option("--keep-first-last", is_flag=True, help="Keep the first and last quantizable nodes float.")
@click.option("--min-cosine", type=float, help="Accuracy guard: smallest output cosine to the float model; the "
              "most sensitive nodes are kept float until it holds.")
@click.option("--max-accuracy-drop", type=float, help="Accuracy guard: top-1 accuracy points (needs --data and "
              "--labels).")
@click.option("--labels", type=click.Path(path_type=Path), help="Class labels (.npy) for --max-accuracy-drop.")
@click.option("-O", "level", type=click.Choice(["0", "1", "2", "3"]), default="2", show_default=True,
              help="Graph pipeline run before quantizing (-O2 folds batch norms into convolutions).")
@click.option("--seed", default=0, show_default=True, help="Seed of the calibration inputs without --data.")
@input_shape_option
@output_options
@_handle_errors
def quantize_cmd(model, output, mode, data, samples, method, percentile, per_tensor, activation_type,
                 symmetric_activations, op_types, exclude_nodes, exclude_op_types, keep_first_last, min_cosine,
                 max_accuracy_drop, labels, level, seed, input_shapes, as_json):
    """Quantize MODEL (.onnx) to int8 and write a standard ONNX model (QDQ) that onnxruntime runs
    and `lepton-opt compile` builds on integer kernels."""
    import lepton_opt

    output = _output_path(model, output, ".int8.onnx")
    labels_array = np.load(labels) if labels is not None else None
    start = time.perf_counter()
    with _status(f"quantizing {model.name}…") as status:
        result = lepton_opt.quantize(
            model, mode, level=f"O{level}", input_shapes=_input_shapes(input_shapes), data=data, samples=samples,
            method=method, percentile=percentile, per_channel=not per_tensor, activation_type=activation_type,
            symmetric_activations=symmetric_activations, op_types=_names(op_types),
            exclude_nodes=_names(exclude_nodes) or (), exclude_op_types=_names(exclude_op_types) or (),
            keep_first_last=keep_first_last, min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop,
            labels=labels_array, seed=seed, progress=lambda msg: status.update(f"quantizing {model.name}: {msg}…"))
        _save_model(result.model, output, model)
    elapsed = time.perf_counter() - start
    _warn(result.warnings)
    if as_json:
        _emit_json("quantize", {"model": model, "output": output, "seconds": elapsed, **_quantization_facts(result)})
        return
    _print_quantization(result)
    out.print(f"quantized [bold]{model}[/] -> [bold]{output}[/] in {elapsed:.1f} s", highlight=False, soft_wrap=True)


def _int_list(value: str | None, option: str) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{option} takes comma-separated integers, e.g. 1,8,32; got {value!r}") from None


# The columns of the report's table that fit a terminal.
BENCH_TERMINAL_COLUMNS = ("variant", "p50 ms", "p99 ms", "speed-up vs ort", "throughput /s", "max abs err", "cosine",
                          "top-1 agree", "task acc")


@main.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", default="llvm", show_default=True, help="llvm (alias cpu); cuda needs a GPU.")
@click.option("--variants", default="ort,fp32", show_default=True, metavar="A,B,...",
              help="Variants to measure: ort (baseline, always run), ort-opt, fp32, fp32-untuned, fp32-O0, pruned, ort-pruned, "
                   "fp16, bf16, ort-fp16, int8, ort-int8. Those this version cannot build are reported as unavailable.")
@click.option("--prune-method", type=click.Choice(["channel", "magnitude", "2:4"]), default="channel",
              show_default=True, help="How the pruned and ort-pruned variants prune.")
@click.option("--prune-sparsity", type=float, default=0.3, show_default=True,
              help="Share the pruned variants remove (2:4: always 0.5).")
@input_shape_option
@click.option("--threads", type=int, help="Threads per engine [default: every CPU available].")
@click.option("--batch", "batch", metavar="B1,B2,...", help="Batch sizes to sweep (the model's first dim must be "
              "dynamic) [default: the model's batch, else 1].")
@click.option("--data", type=click.Path(path_type=Path), help="Accuracy inputs: .npz, one array per input, "
              "samples on axis 0 [default: seeded random inputs].")
@click.option("--labels", type=click.Path(path_type=Path), help="Class labels (.npy, one per sample) for task "
              "accuracy; needs --data.")
@click.option("--samples", default=8, show_default=True, help="Seeded inputs for accuracy when --data is not given.")
@click.option("--calibration", type=click.Path(path_type=Path), help="Calibration inputs of the int8 variants "
              "(.npz like --data; keep it apart from the accuracy data) [default: seeded inputs].")
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--rounds", type=int, help="Interleaved timing rounds per batch size [default: fill --duration].")
@click.option("--block", type=int, help="Runs of each variant in a row per round, the first untimed "
              "[default: about 0.1 s worth, 3 to 100].")
@click.option("--duration", default=10.0, show_default=True, help="Seconds of timing per batch size (at least "
              "20 rounds).")
@click.option("--warmup", default=5, show_default=True, help="Untimed rounds before timing.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory probes (one process per variant).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write report.md, report.html (plots) and report.json into this directory.")
@output_options
@_handle_errors
def bench_cmd(model, target, variants, prune_method, prune_sparsity, input_shapes, threads, batch, data, labels, samples,
              calibration, seed, rounds, block, duration, warmup, no_memory, report_dir, as_json):
    """Measure latency, throughput, memory and accuracy of MODEL's variants against onnxruntime."""
    import lepton_opt
    from lepton_opt.bench.report import COLUMNS, variant_row
    from lepton_opt.bench.variants import PruneOptions

    result = lepton_opt.benchmark(
        model, target, variants=variants, input_shapes=_input_shapes(input_shapes), threads=threads,
        batches=_int_list(batch, "--batch"), data=data, labels=labels, samples=samples, seed=seed, rounds=rounds,
        block=block, duration=duration, warmup=warmup, memory=not no_memory, progress=not _quiet(),
        report_dir=report_dir, calibration=calibration,
        prune=PruneOptions(prune_method, 0.5 if prune_method == "2:4" else prune_sparsity))
    if as_json:
        _emit_json("bench", {**result.to_dict(), "ok": not result.failed, "report": report_dir})
    else:
        keep = [COLUMNS.index(c) for c in BENCH_TERMINAL_COLUMNS]
        for b in result.batches:
            table = Table(title=f"{result.name}, batch {b}, {result.threads} threads, {result.rounds[b]} interleaved "
                                f"rounds of {result.block[b]} runs; accuracy on {result.accuracy_inputs}")
            for i in keep:
                table.add_column(COLUMNS[i], justify="left" if i == 0 else "right", no_wrap=True)
            for v in result.variants:
                if v.ok:
                    table.add_row(*[variant_row(result, v, b)[i] for i in keep])
            out.print(table)
        for v in result.variants:
            if not v.ok:
                out.print(f"{v.name}: {v.status}: {v.reason}", highlight=False)
        for note in result.notes if not _quiet() else ():
            out.print(f"note: {note}", highlight=False)
        if report_dir is not None:
            out.print(f"report: {report_dir / 'report.html'} (also report.md, report.json)", highlight=False)
    if result.failed:
        err.print(f"[bold red]error:[/] variant(s) {', '.join(v.name for v in result.failed)} failed "
                  f"(reasons {'in the document' if as_json else 'above'})", highlight=False)
        sys.exit(1)


@main.command("tune")
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--target", "-t", default="llvm", show_default=True, help="llvm (alias cpu).")
@click.option("--budget", help="Wall-clock budget, e.g. 90s, 20m, 1h [default: 20m unless --trials is given].")
@click.option("--trials", type=int, help="Candidates to measure at most.")
@click.option("--records", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Keep the records in DIR instead of the user cache (apply them with compile --records DIR).")
@input_shape_option
@click.option("--mcpu", help="LLVM CPU name to tune for (default: the host CPU and its features).")
@click.option("--rpc-tracker", metavar="HOST:PORT", help="Measure on the devices of this TVM RPC tracker.")
@click.option("--rpc-key", metavar="KEY", help="The key the measuring devices registered under (--rpc-tracker).")
@click.option("--batch", "batch", type=int, default=8, show_default=True, help="Candidates built and measured "
              "per round.")
@click.option("-O", "level", type=click.Choice(["0", "1", "2", "3"]), default="2", show_default=True,
              help="Graph pipeline before lowering, as compile runs it.")
@click.option("--confirm/--no-confirm", default=True, show_default=True,
              help="Spend the last 20% of the budget timing each kernel's best few tiles inside the whole "
                   "model, and keep the fastest there.")
@click.option("--list", "list_cache", is_flag=True, help="List the record cache (one directory per target).")
@click.option("--clear", "clear_cache", is_flag=True, help="Delete the record cache.")
@functools.partial(precision_options, int8=True)
@output_options
@_handle_errors
def tune_cmd(model, target, budget, trials, records, input_shapes, mcpu, rpc_tracker, rpc_key, batch, level,
             confirm, list_cache, clear_cache, as_json, **precision):
    """Tune MODEL's CPU kernels; compile applies the records automatically.

    Measures the schedule knobs of every convolution and matmul (register tile, loop order),
    heaviest kernels first, within --budget or --trials; Ctrl-C keeps what was measured.
    """
    from lepton_opt.targets import records as record_cache

    if list_cache or clear_cache:
        if model is not None:
            raise InputError("--list and --clear manage the record cache; give no MODEL with them")
        root = record_cache.tuning_root()
        if clear_cache:
            removed = record_cache.clear_cache()
            if as_json:
                _emit_json("tune", {"action": "clear", "cache": root, "removed": removed})
            else:
                out.print(f"removed {removed} record director{'y' if removed == 1 else 'ies'} from {root}",
                          highlight=False)
            return
        stores = record_cache.list_stores()
        if as_json:
            _emit_json("tune", {"action": "list", "cache": root, "stores": [
                {"directory": s.path.name, "target": s.target, "kernels": s.workloads, "records": s.records,
                 "bytes": s.bytes} for s in stores]})
        else:
            _print_cache(root, stores)
        return
    if model is None:
        raise InputError("give the MODEL to tune (or --list / --clear for the record cache)")
    import lepton_opt

    precision = _precision_kwargs(**precision)
    with contextlib.nullcontext() if _quiet() else _TuneProgress(model.name) as bar:
        result = lepton_opt.tune(model, target, budget=budget, trials=trials, records=records,
                                 input_shapes=_input_shapes(input_shapes), mcpu=mcpu, level=f"O{level}",
                                 rpc_tracker=rpc_tracker, rpc_key=rpc_key, batch=batch,
                                 progress=None if bar is None else bar.update, confirm=confirm, **precision)
    if as_json:
        _emit_json("tune", {
            "action": "tune", "model": model, "target": result.target, "records": result.records,
            "trials": result.trials, "seconds": result.seconds, "interrupted": result.interrupted,
            "default_ms": result.default_ms, "best_ms": result.best_ms,
            "improved_kernels": result.improved_workloads, "confirmed": result.confirmed,
            "confirm_note": result.confirm_note,
            "kernels": [{"name": t.name, "rule": t.rule, "calls": t.weight, "default_ms": t.default_ms,
                         "best_ms": t.best_ms, "speedup": t.speedup, "default_tile": t.default_tile,
                         "best_tile": t.best_tile, "model_tile": t.model_tile, "model_ms": t.model_ms,
                         "tiles": t.tiles, "measured": t.measured, "trials": t.trials} for t in result.tasks],
            "skipped": result.skipped})
    else:
        _print_tuning(result)
    if result.interrupted:
        err.print("interrupted: the records measured so far are kept")
        sys.exit(130)


def _print_cache(root: Path, stores) -> None:
    if not stores:
        out.print(f"no tuning records in {root}", highlight=False)
        return
    table = Table(title=f"tuning records in {root}")
    for col, justify in (("directory", "left"), ("target", "left"), ("kernels", "right"), ("records", "right"),
                         ("size", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for s in stores:
        table.add_row(s.path.name, s.target, str(s.workloads), str(s.records), f"{s.bytes / 1e6:.1f} MB")
    out.print(table)


_TUNE_ROWS = 20


def _print_tuning(result) -> None:
    table = Table(title=f"kernels, heaviest first ({len(result.tasks)} tunable; ms per call)")
    table.add_column("kernel", ratio=1, overflow="ellipsis", no_wrap=True)
    for col in ("calls", "default", "tuned", "gain", "tile", "in model", "tried"):
        table.add_column(col, justify="left" if col in ("tile", "in model") else "right", no_wrap=True)
    for t in result.tasks[:_TUNE_ROWS]:
        in_model = "-" if t.model_tile is None else f"{t.model_tile} {t.model_ms:.3f}"
        table.add_row(t.name, str(t.weight), "-" if t.default_ms is None else f"{t.default_ms:.3f}",
                      "-" if t.best_ms is None else f"{t.best_ms:.3f}",
                      "-" if t.speedup is None else f"{t.speedup:.2f}x", t.best_tile or "-", in_model,
                      f"{t.measured}/{t.tiles}")
    if len(result.tasks) > _TUNE_ROWS:
        table.add_row(f"... and {len(result.tasks) - _TUNE_ROWS} more", "", "", "", "", "", "", "")
    _detail(table)
    before, after = result.default_ms, result.best_ms
    ratio = f" ({before / after:.2f}x)" if after > 0 else ""
    out.print(f"{result.trials} candidates measured in {result.seconds:.0f} s; kernel time per model run "
              f"(sum of calls x kernel time): {before:.3f} ms with the default schedules, {after:.3f} ms tuned{ratio}",
              highlight=False, soft_wrap=True)
    if result.confirmed:
        out.print(f"confirmed in the model: {result.confirmed} kernel(s) timed with their best tiles inside the "
                  "whole model; those picks are the records (column 'in model')", highlight=False, soft_wrap=True)
    elif result.confirm_note:
        out.print(f"no in-model confirmation: {result.confirm_note}", highlight=False, soft_wrap=True)
    out.print(f"records: {result.records} ({result.improved_workloads} kernel(s) new or faster); "
              "`lepton-opt compile` applies them", highlight=False, soft_wrap=True)


class _TuneProgress:
    """A rich progress bar over the budget (time or trials) with the tuning state."""

    def __init__(self, name: str):
        from rich.progress import BarColumn, Progress, TextColumn

        self.name = name
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}"),
                                 console=err, transient=True)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task(f"tuning {self.name}", total=1.0, state="extracting kernels…")
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, p) -> None:
        if p.budget_s:
            done = min(1.0, p.elapsed_s / p.budget_s)
            left = f"{max(0.0, p.budget_s - p.elapsed_s) / 60:.1f} min left"
        else:
            done = min(1.0, p.trials / max(p.trial_budget or 1, 1))
            left = f"{max(0, (p.trial_budget or 0) - p.trials)} trials left"
        best = f"{p.default_ms:.2f} -> {p.best_ms:.2f} ms" if p.default_ms else "measuring defaults"
        self.progress.update(self.task, completed=done, state=f"{p.trials} trials, {p.tasks_started}/{p.tasks} "
                             f"kernels, {best}, {left}")


if __name__ == "__main__":
    main()
