"""Loader throughput: DALI vs the torch (torchvision transforms) baseline, side by side in one process.

For each policy both loaders are built, then measured in alternating rounds (DALI, torch,
torch, DALI, ...) so that background load on a shared machine hits both alike. A round
starts a fresh epoch, takes `warmup` batches untimed (pipeline build, worker start-up, first
batches), then times `steps` batches. The reported rate is the median over rounds; every round's
rate is kept in the record.
"""
from __future__ import annotations

import json
import os
import statistics
import time

import torch

from ..provenance import git_commit, machine_info, utc_now

BACKENDS = ("dali", "torch")   # supcon_fast.data's builders' names ('torchvision' accepted for 'torch')


def make_loader(kind, root, *, policy, device, size, views, batch_size, threads, seed=0):
    if kind == "dali":
        from ..data import build_train_loader

        return build_train_loader(root, batch_size=batch_size, n_views=views, size=size,
                                  policy=policy, device=device, num_threads=threads, seed=seed)
    if kind in ("torch", "torchvision"):
        from ..data.torch_loaders import TorchTrainLoader

        return TorchTrainLoader(root, batch_size=batch_size, n_views=views, size=size,
                                      policy=policy, num_threads=threads, seed=seed)
    raise ValueError(f"backends: unknown backend {kind!r}; choose from {BACKENDS}")


def _time_round(loader, epoch, warmup, steps, device):
    loader.set_epoch(epoch)
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(warmup):
        next(it)
    t1 = time.perf_counter()
    n_img = n_views = 0
    for _ in range(steps):
        views, labels = next(it)
        views = [v.to(device, non_blocking=True) for v in views]  # the torch loaders yield CPU tensors
        n_img += labels.shape[0]
        n_views += sum(v.shape[0] for v in views)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    del it  # ends the epoch early (DALI frees its pipeline)
    return {"warmup_s": t1 - t0, "images": n_img, "views": n_views, "seconds": t2 - t1}


def run_benchmark(root, *, backends=BACKENDS, policies=("simclr",), device="cpu", size=224, views=2,
                  batch_size=32, threads=2, steps=10, warmup=2, rounds=3, note=""):
    """Returns one record per (policy, loader)."""
    commit, date, machine = git_commit(), utc_now(), machine_info(device)
    torch.set_num_threads(1)  # the loaders' own threads/workers are the CPU budget under test
    records = []
    for policy in policies:
        built = {k: make_loader(k, root, policy=policy, device=device, size=size, views=views,
                                batch_size=batch_size, threads=threads) for k in backends}
        need = warmup + steps
        for k, ld in built.items():
            if len(ld) < need:
                raise ValueError(f"steps: warmup + steps = {need} batches exceed one epoch "
                                 f"({len(ld)} batches of {batch_size}) of {root!r}; use a "
                                 f"larger dataset or fewer steps")
        per = {k: [] for k in backends}
        for r in range(rounds):
            order = list(backends) if r % 2 == 0 else list(reversed(backends))
            for k in order:
                per[k].append(_time_round(built[k], r, warmup, steps, device))
        for k in backends:
            rounds_ = per[k]
            vps = [x["views"] / x["seconds"] for x in rounds_]
            ips = [x["images"] / x["seconds"] for x in rounds_]
            records.append({
                "backend": k, "policy": policy, "device": str(device), "size": size,
                "views": views, "batch_size": batch_size, "threads": threads,
                "views_per_s": round(statistics.median(vps), 2),
                "images_per_s": round(statistics.median(ips), 2),
                "views_per_s_rounds": [round(v, 2) for v in vps],
                "warmup_s_rounds": [round(x["warmup_s"], 3) for x in rounds_],
                "steps": steps, "warmup": warmup, "rounds": rounds,
                "dataset": os.path.abspath(root), "commit": commit, "date": date,
                "machine": machine, "torch": torch.__version__, "dali": machine.get("dali"),
                "load_avg_end": list(os.getloadavg()), "note": note})
        del built
    return records


def ratios(records, policy=None):
    """DALI / torch views/s per policy."""
    by = {(r["policy"], r["backend"]): r["views_per_s"] for r in records}
    out = {}
    for (pol, kind), v in by.items():
        if kind == "dali" and (pol, "torch") in by and (policy is None or pol == policy):
            out[pol] = round(v / by[(pol, "torch")], 2)
    return out


def write_json(records, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"records": records, "dali_over_torch": ratios(records)}, f, indent=1)


def plot(records, path):
    """Grouped bar chart: views/s per policy, one bar per loader, ratio above the DALI bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(r["policy"] for r in records))
    kinds = list(dict.fromkeys(r["backend"] for r in records))
    by = {(r["policy"], r["backend"]): r["views_per_s"] for r in records}
    rat = ratios(records)
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(1.6 * len(policies) + 2, 4))
    for j, k in enumerate(kinds):
        xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(len(policies))]
        ys = [by.get((p, k), 0) for p in policies]
        bars = ax.bar(xs, ys, width, label=k)
        if k == "dali":
            for b, p in zip(bars, policies):
                if p in rat:
                    ax.annotate(f"{rat[p]:.2f}x", (b.get_x() + b.get_width() / 2, b.get_height()),
                                ha="center", va="bottom", fontsize=8)
    r0 = records[0]
    ax.set_xticks(range(len(policies)), policies)
    ax.set_ylabel("views / s")
    ax.set_title(f"{r0['device']}, {r0['threads']} threads, {r0['size']}px, {r0['views']} views, "
                 f"batch {r0['batch_size']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
