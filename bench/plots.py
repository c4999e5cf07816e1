"""The state-size sweep's plots: one PNG per metric against window-keys (log x axis), from the
``sweep`` section of a results JSON (``bench/sweep.py``).

Runs in the bench-only venv, which has matplotlib (the main venv does not)::

    .bench-venv/bin/python -m bench.plots bench/results/latest.json bench/results

Prints the name of each PNG it wrote, one a line. A goal is a dashed line; a failover that ran
into the sweep's cap is drawn at the cap as an upward triangle, labelled ``>cap``; a figure a
size did not produce (a failed size) is left out of its plot.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
from matplotlib.ticker import FuncFormatter  # noqa: E402

Row = dict[str, Any]


@dataclass(frozen=True)
class Metric:
    file: str
    title: str
    ylabel: str
    value: Callable[[Row], float | None]
    goal: float | None = None  # at 10^7 window-keys, drawn as a dashed line
    log_y: bool = False


def _mb(key: str) -> Callable[[Row], float | None]:
    return lambda r: r[key] / 1e6 if r.get(key) is not None else None


def _get(key: str) -> Callable[[Row], float | None]:
    return lambda r: r.get(key)


METRICS = [
    Metric("sweep-msg-per-s.png", "Counting rate, one worker", "msg/s", _get("msg_per_s")),
    Metric("sweep-peak-rss.png", "Peak RSS of the worker (counting, SQL, recovery)", "MB",
           _get("peak_rss_mb"), goal=1024, log_y=True),
    Metric("sweep-rocksdb-bytes.png", "RocksDB tables on disk", "MB", _mb("rocksdb_bytes"),
           log_y=True),
    Metric("sweep-sqlite-bytes.png", "SQLite snapshot on disk", "MB", _mb("sqlite_bytes"),
           log_y=True),
    Metric("sweep-sql-p99.png", "Filtered SQL query while ingesting, p99", "ms",
           _get("sql_ms_p99"), goal=100, log_y=True),
    Metric("sweep-failover.png", "Failover: SIGKILL to the exact total again", "s",
           _get("failover_s"), goal=60, log_y=True),
]


def _keys(x: float, _pos: int) -> str:
    exponent = round(math.log10(x)) if x > 0 else 0
    return f"$10^{{{exponent}}}$" if x == 10 ** exponent else f"{x:g}"


def _plain(y: float, _pos: int) -> str:
    return f"{y:,.0f}" if y >= 1 else f"{y:g}"


def _minor(y: float, pos: int) -> str:
    """Only the 2s and 5s of a decade, so that several decades stay legible."""
    lead = round(y / 10 ** math.floor(math.log10(y))) if y > 0 else 0
    return _plain(y, pos) if lead in (2, 5) else ""


def draw(metric: Metric, sweep: dict[str, Any], outdir: Path) -> Path:
    rows = sorted((r for r in sweep["rows"] if "msg_per_s" in r), key=lambda r: r["window_keys"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    xs = [r["window_keys"] for r in rows]
    ys = [metric.value(r) for r in rows]
    known = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if known:
        ax.plot(*zip(*known, strict=True), marker="o", color="tab:blue", label="measured")
        for x, y in known:
            ax.annotate(f"{y:,.0f}" if y >= 10 else f"{y:.2g}", (x, y),
                        textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    if metric.file == "sweep-failover.png":
        capped = [(r["window_keys"], r["failover_timeout_s"]) for r in rows
                  if r.get("failover_timed_out")]
        for n, (x, cap) in enumerate(capped):
            ax.plot([x], [cap], marker="^", color="tab:red", linestyle="none",
                    label=None if n else "no exact answer by the cap")
            ax.annotate(f">{cap:.0f}", (x, cap), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=8, color="tab:red")
    if metric.goal is not None:
        ax.axhline(metric.goal, color="tab:green", linestyle="--", linewidth=1,
                   label=f"goal at $10^7$: under {metric.goal:g} {metric.ylabel}")
    ax.set_xscale("log")
    if metric.log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor))
    elif known:
        ax.set_ylim(0, max(y for _, y in known) * 1.2)
    if xs:  # every size swept, also where this figure is missing
        ax.set_xlim(min(xs) / 3, max(xs) * 3)
    ax.xaxis.set_major_formatter(FuncFormatter(_keys))
    ax.set_xlabel("window-keys in state")
    ax.set_ylabel(metric.ylabel)
    ax.set_title(metric.title, fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.margins(y=0.15)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.text(0.99, 0.01, f"{sweep.get('when', '')} bench.sweep", ha="right", va="bottom",
             fontsize=6, color="gray")
    fig.tight_layout()
    path = outdir / metric.file
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    doc = json.loads(Path(argv[0]).read_text())
    sweep = doc.get("sweep")
    if not sweep or not sweep.get("rows"):
        print(f"{argv[0]} has no sweep rows", file=sys.stderr)
        return 1
    sweep.setdefault("when", doc.get("when", ""))
    outdir = Path(argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    for metric in METRICS:
        print(draw(metric, sweep, outdir).name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
