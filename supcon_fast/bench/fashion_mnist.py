"""The Fashion-MNIST comparison (docs/fashion_mnist.md): SupCon, cross-entropy and SimCLR runs of the
CPU preset, read back from their run folders into one table (mean and every seed) and a chart.

A run folder is ``<root>/<method>-s<seed>/`` as the documented commands write it. What is read is
what each run recorded: the ``summary`` records of its ``metrics.jsonl`` (one per invocation: a
stopped run resumed with ``--resume auto`` has several). Wall time is the sum over invocations; an
invocation that died without a summary counts from its ``run`` record to its last record.
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

METHODS = ("supcon", "ce", "simclr")
SCORES = ("linear_top1", "holdout_top1", "ce_top1")  # ce_top1: the CE model's own classifier
# The dataset's README ("Benchmark"): supervised, end to end, test accuracy (%).
PUBLISHED = {"WRN-40-4": 96.7, "WRN-28-10": 95.9, "ResNet-18": 94.9, "2 Conv + pooling + BN": 93.4}


def read_run(folder: Path) -> dict | None:
    """The last summary of a run folder with its total wall time; None while it has not finished."""
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    invocations, current = [], []
    for rec in records:
        if rec["kind"] == "run" and current:
            invocations.append(current)
            current = []
        current.append(rec)
    invocations.append(current)
    summaries = [r for r in records if r["kind"] == "summary"]
    if not summaries or "linear_top1" not in summaries[-1]:
        return None
    wall = 0.0
    for inv in invocations:
        done = [r for r in inv if r["kind"] == "summary"]
        wall += done[-1]["wall_s"] if done else inv[-1]["time"] - inv[0]["time"]
    last = summaries[-1]
    return {**{k: last.get(k) for k in SCORES + ("best_epoch", "steps", "epochs", "data_backend", "date")},
            "wall_s": round(wall, 1), "invocations": len(invocations), "out": str(folder)}


def collect(root: str | Path) -> dict:
    """{method: {"runs": {seed: run}, "mean": {score: mean over finished seeds}}} for the folders found."""
    out = {}
    for folder in sorted(Path(root).glob("*-s*")):
        match = re.fullmatch(r"(\w+)-s(\d+)", folder.name)
        if not match or match.group(1) not in METHODS or not (folder / "metrics.jsonl").exists():
            continue
        run = read_run(folder)
        if run is not None:
            out.setdefault(match.group(1), {"runs": {}})["runs"][int(match.group(2))] = run
    for entry in out.values():
        runs = list(entry["runs"].values())
        entry["mean"] = {k: round(statistics.mean(r[k] for r in runs), 2)
                         for k in SCORES + ("wall_s",) if all(r.get(k) is not None for r in runs)}
    return out


def markdown(table: dict) -> str:
    """One row per method: linear top-1 (mean, then each seed), the CE model's own top-1, wall time."""
    lines = ["| method | linear top-1, mean (%) | per seed | CE classifier top-1 (%) | wall time a run (min) |",
             "|---|---|---|---|---|"]
    for method in METHODS:
        if method not in table:
            continue
        e = table[method]
        seeds = ", ".join(f"s{s}: {r['linear_top1']:.2f}" for s, r in sorted(e["runs"].items()))
        ce = e["mean"].get("ce_top1")
        lines.append(f"| {method} | {e['mean']['linear_top1']:.2f} | {seeds} | {'' if ce is None else f'{ce:.2f}'} "
                     f"| {e['mean']['wall_s'] / 60:.0f} |")
    return "\n".join(lines)


def plot(table: dict, path: str | Path) -> None:
    """Linear top-1 per method (bar: mean; dots: seeds) beside the published supervised results."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [m for m in METHODS if m in table]
    for i, m in enumerate(names):
        ax.bar(i, table[m]["mean"]["linear_top1"], color="tab:blue", alpha=0.6)
        for r in table[m]["runs"].values():
            ax.plot(i, r["linear_top1"], "ko", ms=4)
    for j, (name, acc) in enumerate(PUBLISHED.items()):
        ax.bar(len(names) + j, acc, color="tab:gray", alpha=0.6)
    ax.set_xticks(range(len(names) + len(PUBLISHED)),
                  [f"{m}\n(ours, CPU)" for m in names] + [n.replace(" + ", "+\n") for n in PUBLISHED], fontsize=7)
    ax.set_ylim(85, 100)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Fashion-MNIST: ours (linear probe, ResNet-18 w16, 10 epochs) vs published (supervised)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
