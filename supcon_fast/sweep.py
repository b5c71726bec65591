"""Hyperparameter-stability sweep: SupCon and cross-entropy over a small grid, and the spread of their accuracy.

The paper's claim: SupCon's accuracy varies less than cross-entropy's across optimizers, augmentations
and learning rates. A sweep calls the training entry point (``supcon_fast.train.train``) once per grid
point, in this process, with that point's options (every run a plain, resumable training run with its
own output folder, the same as ``python -m supcon_fast.train`` with those options) and reports, per
method, the min / median / max of linear top-1 (SupCon) or of top-1 (CE: its own classifier; linear
probe too).

Grid (YAML or dict): ``{"loss": [...], "lr_scale": [...], "optimizer": [...], "policy": [...], "base_lr": {...},
"base": {...}}``; ``lr_scale`` multiplies the base lr of the (loss, optimizer) pair: ``base_lr[loss]`` is a
number or ``{optimizer: number}``. The defaults are the demo preset's SGD lr (0.2 per 256 images) and a
LARS lr 20x that: LARS scales each layer's step by its trust ratio (eta = 0.001), so at the demo's batch
of 64 the SGD lr would leave the weights where they started (a first sweep did exactly that).
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
from pathlib import Path

from .engine.pretrain import NonFiniteLossError
from .train import train

DEFAULT_GRID = {
    "loss": ["supcon", "ce"],
    "lr_scale": [0.5, 1.0, 2.0],
    "optimizer": ["lars", "sgd"],
    "policy": ["simclr", "randaugment"],
    "base_lr": {"supcon": {"sgd": 0.2, "lars": 4.0}, "ce": {"sgd": 0.2, "lars": 4.0}},
    "base": {"config": "demo", "epochs": 3, "linear_epochs": 5},
}
AXES = ("loss", "lr_scale", "optimizer", "policy")


def expand_grid(grid: dict) -> list[dict]:
    """One dict of train.py options per grid point, in a fixed order, with a unique ``name``."""
    grid = {**DEFAULT_GRID, **grid}
    for axis in AXES:
        if not isinstance(grid[axis], (list, tuple)) or not grid[axis]:
            raise ValueError(f"grid: {axis!r} must be a non-empty list, got {grid[axis]!r}")
    unknown = set(grid) - set(DEFAULT_GRID)
    if unknown:
        raise ValueError(f"grid: unknown keys {sorted(unknown)}; expected {sorted(DEFAULT_GRID)}")
    points = []
    for loss, scale, opt, policy in itertools.product(*(grid[a] for a in AXES)):
        base = grid["base_lr"].get(loss)
        if isinstance(base, dict):
            base = base.get(opt)
        if base is None:
            raise ValueError(f"grid: base_lr has no entry for loss {loss!r} with optimizer {opt!r}")
        lr = base * scale
        # the name holds the absolute lr: a rerun reuses a finished folder only for the same settings
        points.append({**grid["base"], "loss": loss, "lr": lr, "optimizer": opt, "policy": policy,
                       "name": f"{loss}-{opt}-{policy}-lr{lr:g}", "lr_scale": scale})
    return points


def train_argv(point: dict, out_root: str) -> list[str]:
    """The training options of one grid point (its own folder under ``out_root``, resumed if there)."""
    argv = ["--out", str(Path(out_root) / point["name"]), "--resume", "auto"]
    for k, v in point.items():
        if k in ("name", "lr_scale"):
            continue
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def run_point(point: dict, out_root: str, log=print, train_fn=train) -> dict:
    """Trains one grid point (resuming if its folder has a checkpoint); returns its summary. A point
    that fails (bad options, a diverged run) is recorded as failed with the error, and the sweep goes on."""
    argv = train_argv(point, out_root)
    log(f"[sweep] {point['name']}: python -m supcon_fast.train {' '.join(argv)}")
    try:
        summary = train_fn(argv)
    except (ValueError, FileNotFoundError, NonFiniteLossError) as e:
        return {**point, "status": "failed", "error": str(e)[-800:]}
    return {**point, **summary}


def run_sweep(points: list[dict], out_root: str, log=print, train_fn=train) -> list[dict]:
    """Every grid point in turn; a point finished before (its ``result.json``) is reused, an unfinished
    one resumes. Returns one result per point, in order."""
    results = []
    for i, point in enumerate(points):
        done = os.path.join(out_root, point["name"], "result.json")
        if os.path.exists(done):
            with open(done) as f:
                res = json.load(f)
        else:
            res = run_point(point, out_root, log, train_fn)
            if res.get("status") == "done":
                os.makedirs(os.path.dirname(done), exist_ok=True)
                with open(done, "w") as f:
                    json.dump(res, f)
        results.append(res)
        log(f"[sweep {i + 1}/{len(points)}] {point['name']}: linear top-1 {res.get('linear_top1')} "
            f"({res.get('status')})")
    return results


def accuracy(result: dict) -> float | None:
    """The accuracy a method is judged by: linear top-1 (both methods are probed the same way)."""
    return result.get("linear_top1")


def spread(results: list[dict]) -> dict:
    """Per method: min, median, max and count of the accuracy over the grid points that finished."""
    out = {}
    for loss in sorted({r["loss"] for r in results}):
        accs = [accuracy(r) for r in results if r["loss"] == loss and accuracy(r) is not None]
        out[loss] = ({"min": min(accs), "median": statistics.median(accs), "max": max(accs),
                      "range": max(accs) - min(accs), "runs": len(accs)} if accs else {"runs": 0})
    return out


def plot(results: list[dict], path: str) -> None:
    """Accuracy of every grid point per method (dots), with the min-median-max spread."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    losses = sorted({r["loss"] for r in results})
    fig, ax = plt.subplots(figsize=(5 + len(losses), 4))
    for i, loss in enumerate(losses):
        rs = [r for r in results if r["loss"] == loss and accuracy(r) is not None]
        accs = [accuracy(r) for r in rs]
        if not accs:
            continue
        ax.vlines(i, min(accs), max(accs), color="gray", lw=6, alpha=0.3)
        ax.hlines(statistics.median(accs), i - 0.2, i + 0.2, color="black")
        for j, r in enumerate(rs):
            ax.plot(i + 0.08 * (j % 5 - 2), accuracy(r), "o", ms=4,
                    color={"lars": "tab:blue", "sgd": "tab:orange"}.get(r["optimizer"], "tab:gray"),
                    marker={"simclr": "o", "randaugment": "s"}.get(r["policy"], "^"))
    ax.set_xticks(range(len(losses)), losses)
    ax.set_ylabel("linear top-1 (%)")
    ax.set_title("Spread over lr x optimizer x policy\n(blue: LARS, orange: SGD; circle: simclr, square: randaugment)",
                 fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
