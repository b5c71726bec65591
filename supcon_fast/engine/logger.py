"""Rank-0 logging: a progress bar (views/s, loss, lr, ETA), metrics.jsonl, TensorBoard, and the curves PNG.

Only rank 0 writes anything; other ranks get a logger whose methods do nothing, so call sites need
no ``if rank == 0``. Human-readable lines go to stderr: stdout is kept for the final JSON line.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class Logger:
    def __init__(self, out_dir: str | Path, *, rank: int = 0, tensorboard: bool = True):
        self.enabled = rank == 0
        self.out = Path(out_dir)
        self._tb = None
        self._bar = None
        self._jsonl = None
        if self.enabled:
            self.out.mkdir(parents=True, exist_ok=True)
            # append: a resumed run continues the same file (steps after the checkpoint are rewritten)
            self._jsonl = open(self.out / "metrics.jsonl", "a", buffering=1)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self._tb = SummaryWriter(str(self.out / "tb"))
                except ImportError:  # tensorboard is optional at runtime
                    self.info("tensorboard not installed: TensorBoard logging off")

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def record(self, kind: str, step: int, **values) -> None:
        """One JSON line ``{"kind", "step", "time", **values}`` in metrics.jsonl only (facts, not curves)."""
        if not self.enabled:
            return
        rec = {"kind": kind, "step": int(step), "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(rec) + "\n")

    def metrics(self, kind: str, step: int, **values) -> None:
        """``record``, and the numbers also go to TensorBoard as kind/key."""
        if not self.enabled:
            return
        self.record(kind, step, **values)
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    # progress bar -------------------------------------------------------------------------------
    def start_bar(self, total: int, initial: int = 0, desc: str = "pretrain") -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        self._bar = tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True,
                         mininterval=1.0, smoothing=0.1)

    def update_bar(self, n: int, **postfix) -> None:
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix(postfix, refresh=False)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.close_bar()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def read_metrics(path: str | Path) -> list[dict]:
    """metrics.jsonl as records; after a resume, later records for a step replace earlier ones."""
    recs: dict[tuple, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                recs[(r["kind"], r["step"], r.get("epoch"))] = r
    return sorted(recs.values(), key=lambda r: r["time"])


def plot_curves(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Training loss per step (left) and accuracies per epoch (right) as one PNG."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics_path)
    train = sorted((r for r in recs if r["kind"] == "train"), key=lambda r: r["step"])
    evals = sorted((r for r in recs if r["kind"] == "eval"), key=lambda r: r["step"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax1.set(xlabel="step", ylabel="training loss", title="pretraining loss")
    ax1.grid(alpha=0.3)
    for key, label in (("knn_top1", "kNN top-1 (val)"), ("train_top1", "train top-1")):
        pts = [(r["epoch"], r[key]) for r in evals if key in r]
        if pts:
            ax2.plot(*zip(*pts), marker="o", label=label)
    lin = [r for r in recs if r["kind"] == "linear"]
    lin_epochs = [r for r in lin if "holdout_top1" in r and "epoch" in r]
    if lin_epochs:
        ax2.plot([r["epoch"] for r in lin_epochs], [r["holdout_top1"] for r in lin_epochs], marker=".",
                 label="linear probe top-1 (held-out train), by linear epoch")
    final = [r for r in lin if "linear_top1" in r]
    if final:
        ax2.axhline(final[-1]["linear_top1"], color="k", ls="--",
                    label=f"linear top-1 (val) {final[-1]['linear_top1']:.2f}%")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax2.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)
