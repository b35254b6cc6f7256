"""A sweep's summary: per grid point, the mean and spread over its seeds of each result."""

from __future__ import annotations

import csv
import io
import itertools
import statistics
from pathlib import Path

from mnist_linear.files import atomic_write_text
from mnist_linear.grid import Run
from mnist_linear.schedule import results_of

METRICS = (
    "train/acc", "val/acc", "test/acc", "train/loss", "val/loss", "test/loss",
    "weight_norm", "best_epoch", "stopped_epoch",
)  # fmt: skip


def summary_rows(folder: Path, runs: list[Run]) -> list[dict[str, object]]:
    """One row per grid point: its values, the finished runs, mean and std of each metric."""
    rows = []
    for point, group in itertools.groupby(runs, key=lambda run: run.point):
        results = [r for r in (results_of(folder / run.name) for run in group) if r]
        row: dict[str, object] = {key: value for key, value in point}
        row["runs"] = len(results)
        for metric in METRICS:
            values = [r[metric] for r in results if r.get(metric) is not None]
            row[f"{metric} mean"] = statistics.fmean(values) if values else ""
            row[f"{metric} std"] = statistics.stdev(values) if len(values) > 1 else ""
        rows.append(row)
    return rows


def _cell(value: object, column: str) -> str:
    if value == "" or not isinstance(value, float):
        return str(value)
    if "acc" in column:
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


def write_summary(folder: Path, runs: list[Run]) -> str:
    """summary.csv and summary.md in the sweep's folder; returns the Markdown table."""
    rows = summary_rows(folder, runs)
    columns = list(rows[0])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / "summary.csv", text.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c], c) for c in columns) + " |" for row in rows]
    table = "\n".join(lines) + "\n"
    atomic_write_text(folder / "summary.md", table)
    return table
