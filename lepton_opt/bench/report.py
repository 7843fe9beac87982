"""Benchmark reports: Markdown, a self-contained HTML page with plots, and JSON.

One or more :class:`~lepton_opt.bench.runner.BenchmarkResult` (a suite) go into one report.
The HTML page embeds its plots as inline SVG (matplotlib), so it is a single file that opens
anywhere with no network: latency distributions per variant, speed-up over onnxruntime,
accuracy against speed-up, and throughput over batch size when batches were swept.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lepton_opt.bench.runner import BenchmarkResult, VariantResult
from lepton_opt.bench.variants import BASELINE, VARIANTS

REPORT_FILES = ("report.md", "report.html", "report.json")

COLUMNS = ["variant", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "speed-up vs ort", "throughput /s",
           "build s", "artifact MB", "peak RSS MB (+added)", "max abs err", "max rel err", "cosine",
           "top-1 agree", "top-5 agree", "task acc"]


# ------------------------------------------------------------------------------------------
# Shared text: the rows both the Markdown and the HTML tables show


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{spec}}{suffix}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def variant_row(result: BenchmarkResult, v: VariantResult, batch: int | None = None) -> list[str]:
    batch = result.batches[0] if batch is None else batch
    if not v.ok:
        return [v.name, f"{v.status}: {v.reason}"] + [""] * (len(COLUMNS) - 2)
    lat = v.latency.get(batch)
    acc = v.accuracy
    reference = v.name == BASELINE
    speedup = result.speedup(v.name, batch)
    mem = v.memory
    return [
        v.name,
        _fmt(lat and lat.p50, ".2f"), _fmt(lat and lat.p90, ".2f"), _fmt(lat and lat.p99, ".2f"),
        "–" if lat is None else f"{lat.mean:.2f} ± {lat.std:.2f}",
        _fmt(speedup, ".2f", "x"),
        _fmt(lat and lat.throughput, ".1f"),
        _fmt(v.build_s.get(batch), ".1f"),
        _fmt(None if v.artifact_bytes is None else v.artifact_bytes / 2**20, ".1f"),
        "–" if mem is None else f"{mem.peak_mb:.0f} (+{mem.added_mb:.0f})",
        "reference" if reference else _fmt(acc and acc.max_abs, ".2e"),
        "" if reference else _fmt(acc and acc.max_rel, ".2e"),
        "" if reference else _fmt(acc and acc.cosine, ".6f"),
        "" if reference else _pct(acc and acc.top1),
        "" if reference else _pct(acc and acc.top5),
        _pct(acc and acc.task_accuracy),
    ]


def sweep_rows(result: BenchmarkResult) -> list[list[str]]:
    rows = []
    for v in result.variants:
        for b in result.batches:
            lat = v.latency.get(b)
            if lat is not None:
                rows.append([v.name, str(b), f"{lat.p50:.2f}", f"{lat.throughput:.1f}",
                             _fmt(result.speedup(v.name, b), ".2f", "x")])
    return rows


SWEEP_COLUMNS = ["variant", "batch", "p50 ms", "throughput /s", "speed-up vs ort"]


def context_lines(result: BenchmarkResult) -> list[str]:
    m = result.machine
    shapes = ", ".join(f"{k} {'x'.join(map(str, s)) or 'scalar'}" for k, s in result.input_shapes.items())
    rounds = "; ".join(f"batch {b}: {r} rounds of {result.block[b]} runs per variant" for b, r in result.rounds.items())
    lines = [
        f"model: {result.model} (sha256 {result.sha256[:12]})",
        f"target: {result.target}{' (' + m['llvm_mcpu'] + ')' if m.get('llvm_mcpu') else ''}; "
        f"{result.threads} threads per engine; inputs {shapes}",
        f"latency: after warm-up, interleaved rounds in which each variant runs a block of runs in a row, "
        f"the first untimed, in an order shuffled every round ({rounds})",
        f"accuracy against onnxruntime fp32 on {result.accuracy_inputs}",
    ]
    alone = result.ort_spinning_alone.get(result.batches[0])
    base = result.variant(BASELINE).latency.get(result.batches[0])
    if alone is not None and base is not None:
        lines.append(f"onnxruntime with its default thread spinning, timed alone: p50 {alone.p50:.2f} ms "
                     f"(interleaved, without spinning: {base.p50:.2f} ms)")
    return lines + list(result.notes)


def machine_line(results: Sequence[BenchmarkResult]) -> str:
    m = results[0].machine
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    return (f"{m['cpu']}, {m['cpus_available']} CPUs available, Python {m['python']}, {m['platform']}; "
            f"{versions}")


# ------------------------------------------------------------------------------------------
# Markdown


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def suite_rows(results: Sequence[BenchmarkResult]) -> list[list[str]]:
    """One row per model and measured variant: the suite's summary table."""
    rows = []
    for r in results:
        for v in r.variants:
            if v.name == BASELINE or not v.ok:
                continue
            lat, base, acc = v.latency.get(r.batches[0]), r.variant(BASELINE).latency.get(r.batches[0]), v.accuracy
            rows.append([r.name, v.name, _fmt(base and base.p50, ".2f"), _fmt(lat and lat.p50, ".2f"),
                         _fmt(r.speedup(v.name), ".2f", "x"), _fmt(acc and acc.max_abs, ".1e"),
                         _fmt(acc and acc.cosine, ".6f"), _pct(acc and acc.task_accuracy)])
    return rows


SUITE_COLUMNS = ["model", "variant", "ort p50 ms", "variant p50 ms", "speed-up vs ort", "max abs err",
                 "cosine", "task acc"]


def markdown(results: Sequence[BenchmarkResult]) -> str:
    lines = ["# lepton-opt benchmark report", "", f"Date: {results[0].date}. Machine: {machine_line(results)}.", "",
             "Speed-up is how many times faster than onnxruntime a variant ran (above 1: faster), from the same "
             "interleaved run: in each round, onnxruntime's median over the variant's, then the median over rounds. Errors compare each variant's outputs with onnxruntime fp32 "
             "on the same inputs; max rel err is relative to the largest reference magnitude.", ""]
    if len(results) > 1:
        lines += ["## Summary", ""] + _md_table(SUITE_COLUMNS, suite_rows(results)) + [""]
    for r in results:
        lines += [f"## {r.name}", ""] + [f"- {line}" for line in context_lines(r)] + [""]
        lines += _md_table(COLUMNS, [variant_row(r, v) for v in r.variants]) + [""]
        if len(r.batches) > 1:
            lines += ["Batch sweep:", ""] + _md_table(SWEEP_COLUMNS, sweep_rows(r)) + [""]
        for v in r.variants:
            if v.kernels:
                lines += [f"Where the time goes, {v.name} (slowest kernels, `lepton-opt profile`):", ""]
                lines += _md_table(KERNEL_COLUMNS, kernel_rows(v)) + [""]
    return "\n".join(lines)


KERNEL_COLUMNS = ["kernel", "share", "calls", "ms/run", "rule", "GFLOP/s", "why"]


def kernel_rows(v: VariantResult) -> list[list[str]]:
    return [[k["name"], _pct(k["share"]), f"{k['calls']:g}", _fmt(1e3 * k["seconds"], ".3f"), k.get("rule") or "",
             _fmt(k.get("gflops"), ".1f"), k.get("why") or ""] for k in v.kernels or []]


def kernel_plot(result: BenchmarkResult) -> str | None:
    """Share of the run per kernel, the slowest first, for each lepton-opt variant."""
    profiled = [v for v in result.variants if v.kernels]
    if not profiled:
        return None
    fig = _figure(7.5, 1.0 + 0.25 * sum(len(v.kernels) for v in profiled))
    ax = fig.add_subplot()
    labels, shares, colors = [], [], []
    for v in profiled:
        for k in v.kernels:
            labels.append(f"{v.name}: {k['name'][:48]}")
            shares.append(100 * k["share"])
            colors.append(_color(v.name))
    ax.barh(range(len(shares)), shares, color=colors)
    ax.set_yticks(range(len(shares)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of the run (%)")
    ax.set_title(f"{result.name}: where the time goes")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


# ------------------------------------------------------------------------------------------
# Plots (matplotlib, inline SVG)


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})  # same data, same bytes
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
    matplotlib.rcParams["svg.hashsalt"] = "lepton-opt"  # element ids that do not change between renders
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _color(variant: str) -> str:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
    names = list(VARIANTS)
    return palette[names.index(variant) % len(palette)] if variant in names else palette[-1]


def latency_plot(result: BenchmarkResult) -> str | None:
    """Box plot and every run per variant; the axis stops at 1.5x the largest p99 so that a few
    stalls (another process, a page fault) do not squash the boxes, and says how many runs it cut."""
    measured = [v for v in result.variants if v.latency.get(result.batches[0])]
    if not measured:
        return None
    fig = _figure(7.5, 0.6 * len(measured) + 1.4)
    ax = fig.add_subplot()
    stats = [v.latency[result.batches[0]] for v in measured]
    data = [s.times_ms for s in stats]
    ax.boxplot(data, orientation="horizontal", tick_labels=[v.name for v in measured], showfliers=False,
               medianprops={"color": "black"}, widths=0.5)
    for i, (v, times) in enumerate(zip(measured, data), start=1):
        ax.scatter(times, [i] * len(times), s=5, alpha=0.3, color=_color(v.name), zorder=0)
    limit = 1.5 * max(s.p99 for s in stats)
    cut = sum(sum(t > limit for t in times) for times in data)
    ax.set_xlim(0, limit)
    note = f"; {cut} runs above {limit:.3g} ms not shown" if cut else ""
    ax.set_xlabel(f"latency per run (ms), batch {result.batches[0]}{note}")
    ax.set_title(f"{result.name}: latency distribution per variant")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def speedup_plot(results: Sequence[BenchmarkResult]) -> str | None:
    names = [v.name for v in results[0].variants]
    for r in results[1:]:
        names += [v.name for v in r.variants if v.name not in names]
    names = [n for n in names if any(_has(r, n) for r in results)]
    if not names:
        return None
    fig = _figure(max(6.0, 1.2 * len(results) * max(1, len(names)) * 0.5 + 2), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, r in enumerate(results):
            s = r.speedup(name) if _has(r, name) else None
            if s is not None:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(s)
        bars = ax.bar(xs, ys, width, label=name, color=_color(name))
        ax.bar_label(bars, fmt="%.2fx", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(results)), [r.name for r in results])
    ax.set_ylabel("speed-up over onnxruntime (×)")
    ax.set_title("Speed-up over onnxruntime (same interleaved run; above 1 = faster)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig)


def _has(result: BenchmarkResult, name: str) -> bool:
    try:
        return result.variant(name).ok and bool(result.variant(name).latency)
    except KeyError:
        return False


def accuracy_plot(results: Sequence[BenchmarkResult]) -> str | None:
    """Speed-up against accuracy: task accuracy where labels were given, else max rel error."""
    points = []
    for r in results:
        for v in r.variants:
            s = r.speedup(v.name) if v.ok else None
            if s is None or v.accuracy is None:
                continue
            points.append((r.name, v.name, s, v.accuracy))
    if not points:
        return None
    labelled = [p for p in points if p[3].task_accuracy is not None]
    unlabelled = [p for p in points if p[3].task_accuracy is None and p[1] != BASELINE]
    panels = [(labelled, "task accuracy (%)", lambda a: 100 * a.task_accuracy, False),
              (unlabelled, "max rel error vs onnxruntime (log)", lambda a: max(a.max_rel, 1e-9), True)]
    panels = [p for p in panels if p[0]]
    if not panels:
        return None
    fig = _figure(6.5 * len(panels), 4.4)
    markers = "os^Dv<>pP*X"
    model_marker = {r.name: markers[i % len(markers)] for i, r in enumerate(results)}
    for k, (pts, ylabel, y, log) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), k)
        for model, variant, s, acc in pts:
            ax.scatter([s], [y(acc)], s=36, color=_color(variant), marker=model_marker[model], alpha=0.85)
            if len(results) == 1:
                ax.annotate(variant, (s, y(acc)), fontsize=7, textcoords="offset points", xytext=(4, 3))
        if len(results) > 1:  # colour = variant, marker = model: labels on every point would overlap
            from matplotlib.lines import Line2D

            variants = sorted({p[1] for p in pts}, key=list(VARIANTS).index)
            models = sorted({p[0] for p in pts}, key=[r.name for r in results].index)
            handles = [Line2D([], [], color=_color(v), marker="o", linestyle="", label=v) for v in variants]
            handles += [Line2D([], [], color="gray", marker=model_marker[m], linestyle="", label=m) for m in models]
            ax.legend(handles=handles, fontsize=7, loc="best")
        if log:
            ax.set_yscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel("speed-up over onnxruntime (×)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle("Accuracy against speed-up")
    return _svg(fig)


def throughput_plot(result: BenchmarkResult) -> str | None:
    if len(result.batches) < 2:
        return None
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    for v in result.variants:
        pts = [(b, v.latency[b].throughput) for b in result.batches if b in v.latency]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=v.name, color=_color(v.name))
    ax.set_xscale("log", base=2)
    ax.set_xticks(result.batches, [str(b) for b in result.batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (samples/s)")
    ax.set_title(f"{result.name}: throughput over batch size")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _svg(fig)


# ------------------------------------------------------------------------------------------
# HTML

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} .meta{color:#555;font-size:.9rem}
table{border-collapse:collapse;font-size:.82rem;margin:.8rem 0;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:right;white-space:nowrap}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
tr.unavailable td,tr.failed td{color:#888;text-align:left}
.plot svg{max-width:100%;height:auto} .plots{display:flex;flex-wrap:wrap;gap:1rem}
section{border-top:2px solid #eee;margin-top:2rem} ul{font-size:.9rem}
"""


def _html_table(columns: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        if classes and classes[i]:
            cells = f"<td>{html.escape(row[0])}</td><td colspan='{len(columns) - 1}'>{html.escape(row[1])}</td>"
        else:
            cells = "".join(f"<td>{html.escape(c)}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _plot_div(svg: str | None) -> str:
    return f'<div class="plot">{svg}</div>' if svg else ""


def plots_available() -> bool:
    """Whether matplotlib (the ``bench`` extra) is installed; without it the HTML page has no plots."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


PLOTS_NOTE = "plots need matplotlib: pip install 'lepton-opt[bench]'"


def html_page(results: Sequence[BenchmarkResult]) -> str:
    if not plots_available():
        return _html_page(results, plots=False)
    return _html_page(results, plots=True)


def _html_page(results: Sequence[BenchmarkResult], plots: bool) -> str:
    def plot(make, *args) -> str:
        return _plot_div(make(*args)) if plots else ""

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>lepton-opt benchmark report"
             f"</title><style>{_STYLE}</style></head><body>",
             "<h1>lepton-opt benchmark report</h1>",
             f"<p class='meta'>{html.escape(results[0].date)} · {html.escape(machine_line(results))}</p>",
             "<p>Speed-up is how many times faster than onnxruntime a variant ran (above 1: faster), from the "
             "same interleaved run: in each round, onnxruntime's median over the variant's, then the median over rounds. Errors compare each variant's outputs with onnxruntime "
             "fp32 on the same inputs.</p>"]
    if not plots:
        parts.append(f"<p class='meta'>No plots: {html.escape(PLOTS_NOTE)}.</p>")
    if len(results) > 1:
        parts += ["<h2>Summary</h2>", _html_table(SUITE_COLUMNS, suite_rows(results))]
    parts.append(f"<div class='plots'>{plot(speedup_plot, results)}{plot(accuracy_plot, results)}</div>")
    for r in results:
        parts.append(f"<section><h2>{html.escape(r.name)}</h2><ul>"
                     + "".join(f"<li>{html.escape(line)}</li>" for line in context_lines(r)) + "</ul>")
        parts.append(_html_table(COLUMNS, [variant_row(r, v) for v in r.variants],
                                 ["" if v.ok else v.status for v in r.variants]))
        if len(r.batches) > 1:
            parts.append(_html_table(SWEEP_COLUMNS, sweep_rows(r)))
        parts.append(f"<div class='plots'>{plot(latency_plot, r)}{plot(throughput_plot, r)}</div>")
        for v in r.variants:
            if v.kernels:
                parts.append(f"<h3>Where the time goes: {html.escape(v.name)}</h3>"
                             + _html_table(KERNEL_COLUMNS, kernel_rows(v)))
        parts.append(f"<div class='plots'>{plot(kernel_plot, r)}</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------
# Files


def to_json(results: Sequence[BenchmarkResult]) -> str:
    return json.dumps({"results": [r.to_dict() for r in results]}, indent=1, allow_nan=True) + "\n"


def load_results(path: str | os.PathLike) -> list[BenchmarkResult]:
    """The results of a ``report.json``, to render its reports again."""
    return [BenchmarkResult.from_dict(r) for r in json.loads(Path(path).read_text())["results"]]


def write_reports(results: Sequence[BenchmarkResult], directory: str | os.PathLike) -> dict[str, Path]:
    """Write report.md, report.html and report.json into ``directory``.

    The files are written to a temporary directory beside it first and then moved in, so a
    failure leaves no half-written report; other files in ``directory`` are left alone."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=directory))
    try:
        contents = {"report.md": markdown(results), "report.html": html_page(results), "report.json": to_json(results)}
        for name, text in contents.items():
            (tmp / name).write_text(text, encoding="utf-8")
        paths = {}
        for name in contents:
            os.replace(tmp / name, directory / name)
            paths[name.split(".")[1]] = directory / name
        return paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
