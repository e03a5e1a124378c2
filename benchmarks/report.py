"""summary.md and the PNG plots of one result set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.results import Row
from benchmarks.targets import Check


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


TABLE_HEADER = (
    "| model | scenario | dtype | items/s | vs stock | vs TS launcher | p50 ms | p99 ms "
    "| model ms | errors | CPU % | faults/req | allocator | efficiency | of limit |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
)


def table(rows: Sequence[Row]) -> str:
    lines = [TABLE_HEADER]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.model} | {r.scenario} | {r.dtype} | {r.status} |"
                         + " - |" * 11)
            continue
        lines.append(
            f"| {r.model} | {r.scenario} | {r.dtype} | {_num(r.items_per_s)} "
            f"| {_ratio(r.ratio_to_stock)} | {_ratio(r.ratio_to_torchserve_launcher)} "
            f"| {_num(r.latency_p50, 0)} | {_num(r.latency_p99, 0)} | {_num(r.predict_mean)} "
            f"| {r.failed_requests} | {_num(r.server_cpu_percent, 0)} "
            f"| {_num(r.page_faults_per_request, 0)} | {r.allocator} "
            f"| {_num(r.serving_efficiency, 2)} | {_num(r.fraction_of_limit, 2)} |"
        )
    return "\n".join(lines)


def headline(rows: Sequence[Row]) -> list[str]:
    """One line per model: the best row and its ratios."""
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        ok = [r for r in rows if r.model == model and r.status == "ok"]
        if not ok:
            continue
        best = max(ok, key=lambda r: r.items_per_s)
        line = (f"- **{model}**: best `{best.scenario}` ({best.dtype}) "
                f"{best.items_per_s:.1f} items/s = **{_ratio(best.ratio_to_stock)} stock**")
        if best.ratio_to_torchserve_launcher is not None:
            line += f", {_ratio(best.ratio_to_torchserve_launcher)} TorchServe's own launcher"
        out.append(line)
    return out


def targets_table(checks: Sequence[Check]) -> str:
    lines = ["| model | target | wanted | got | from | verdict |", "|---|---|---:|---:|---|---|"]
    for c in checks:
        lines.append(f"| {c.model} | {c.what} | {c.target:g} | {_num(c.value, 2)} "
                     f"| {c.scenario} | {c.shortfall} |")
    return "\n".join(lines)


def summary_markdown(
    rows: Sequence[Row], checks: Sequence[Check], facts: Mapping[str, object],
    peak_lines: Sequence[str], settings: Mapping[str, object], plots: Sequence[str],
) -> str:
    parts = [
        f"# Benchmark {settings.get('started', '')} on {facts.get('hostname')}",
        "",
        f"{facts.get('cpu_model')}, {facts.get('logical_cpus')} CPUs, "
        f"torch {facts.get('torch')}, TorchServe {facts.get('torchserve')}. "
        f"Load: {settings.get('load')}. Every run: ab -k, warm-up of ~1/10 of the requests first.",
        "",
        f"Machine load average when the run started: {facts.get('load_average_at_start')} "
        "(other work on these cores lowers every figure, the 2-thread raw loop most).",
        "",
        "## Headline (ratio to `stock`)",
        "",
        *headline(rows),
        "",
        "## Targets",
        "",
        targets_table(checks) if checks else "No ResNet-50 or BERT rows: no targets apply.",
        "",
        "## All runs",
        "",
        table(rows),
        "",
        "## Reference lines",
        "",
        *peak_lines,
        "",
        "efficiency = served items/s / raw in-process loop of the same model on the same cores;"
        " of limit = items/s x FLOPs per item / measured peak.",
        "",
        "## Notes",
        "",
        *[f"- `{r.scenario}` / {r.model}: {r.note}" for r in rows if r.note],
        "",
        *[f"![{Path(p).stem}]({p})" for p in plots],
        "",
    ]
    return "\n".join(parts)


def plot(rows: Sequence[Row], out_dir: Path) -> list[str]:
    """Throughput and latency per scenario, one group of bars per model; returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.status == "ok"]
    models = list(dict.fromkeys(r.model for r in ok))
    scenarios = list(dict.fromkeys(r.scenario for r in ok))
    names = []
    for file_name, title, value in (
        ("throughput.png", "Throughput (items/s, higher is better)", lambda r: r.items_per_s),
        ("latency.png", "Latency p50 with p99 whiskers (ms, lower is better)",
         lambda r: r.latency_p50 or 0.0),
    ):
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(scenarios) * max(1, len(models))), 4.5))
        width = 0.8 / max(1, len(models))
        for m_index, model in enumerate(models):
            xs, ys, errs = [], [], []
            for s_index, scenario in enumerate(scenarios):
                row = next((r for r in ok if r.model == model and r.scenario == scenario), None)
                if row is None:
                    continue
                xs.append(s_index + m_index * width)
                ys.append(value(row))
                errs.append(max(0.0, (row.latency_p99 or 0.0) - (row.latency_p50 or 0.0)))
            yerr = [[0] * len(errs), errs] if file_name == "latency.png" else None
            bars = ax.bar(xs, ys, width, label=model, yerr=yerr, capsize=3)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(scenarios))])
        ax.set_xticklabels(scenarios, rotation=25, ha="right")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / file_name, dpi=110)
        plt.close(fig)
        names.append(file_name)
    return names
