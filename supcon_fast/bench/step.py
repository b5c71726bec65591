"""Step-cost profiler: what a SupCon step costs against a cross-entropy step, phase by phase.

It times the trainer's own ``TrainStep`` (engine/step.py), not a copy: the phases are cut by hooks on
the real objects. Marks, in the order one step passes them:

    start -> data ready -> encoder forward -> head forward -> loss forward -> (backward starts at the
    loss) -> loss backward done (gradient reaches the loss input) -> optimizer step begins -> ends

    data_wait        start .. data ready                    (the real loader, or on-device synthetic data)
    encoder_forward  data ready .. encoder output           (includes zero_grad, the lr update, the cat)
    head             encoder output .. loss input           (projection head, fp32 normalization, cast)
    loss             loss forward + loss backward           (with the gather under torchrun)
    backward         the rest of backward                   (head and encoder, DDP's all-reduce)
    optimizer        optimizer.step
    queue_feed       optimizer done .. step returns         (--queue: the momentum update, the key
                                                             forward and the push; else ~0)

so ``step`` (data ready .. step returns) is exactly the sum of the phases after data_wait. On GPU the
marks are CUDA events on the current stream; on CPU, ``perf_counter``. ``--contrast-n N`` makes the
loss contrast the local views against N views (the local ones plus fixed stand-ins for other ranks'),
as one rank of a large multi-GPU job does. ``--queue K`` adds a ``ContrastQueue`` of K rows to the loss
(full of random unit rows before the timed steps), fed after each step as the trainer feeds it.
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch

from ..provenance import git_commit, machine_info, utc_now
from ..loss import anchor_block_terms, masked_mean
from ..models import build_model
from ..reference import flatten_views
from ..engine.losses import make_criterion
from ..engine.momentum import MomentumEncoder, QueueFeeder
from ..data.memory import SyntheticLoader
from ..engine.optim import WarmupCosine, build_optimizer
from ..engine.precision import amp_dtype, dtype_name, grad_scaler, resolve_loss_dtype
from ..engine.step import TrainStep
from .loss import random_queue

PHASES = ("data_wait", "encoder_forward", "head", "loss", "backward", "optimizer", "queue_feed")
FEAT_DIM = 128


class Clock:
    """Named time marks: CUDA events on a GPU, perf_counter on the CPU (work there is synchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: dict[str, object] = {}

    def mark(self, name: str) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks[name] = ev
        else:
            self.marks[name] = time.perf_counter()

    def ms(self, a: str, b: str) -> float:
        if self.cuda:
            return self.marks[a].elapsed_time(self.marks[b])
        return (self.marks[b] - self.marks[a]) * 1e3


def phases_ms(c: Clock) -> dict[str, float]:
    """One step's phases from its marks (see the module docstring)."""
    return {
        "data_wait": c.ms("start", "data"),
        "encoder_forward": c.ms("data", "encoder_end"),
        "head": c.ms("encoder_end", "loss_start"),
        "loss": c.ms("loss_start", "loss_fwd_end") + c.ms("bwd_start", "loss_bwd_end"),
        "backward": c.ms("loss_fwd_end", "bwd_start") + c.ms("loss_bwd_end", "opt_start"),
        "optimizer": c.ms("opt_start", "opt_end"),
        "queue_feed": c.ms("opt_end", "feed_end"),
        "step": c.ms("data", "feed_end"),
    }


def stand_in_contrast_criterion(criterion_kwargs: dict, contrast_n: int, num_classes: int, device, seed: int = 0):
    """A SupCon criterion whose contrast set is the local views plus fixed stand-ins up to ``contrast_n`` views.

    Local features [B, V, D] are the anchors (offset 0); the stand-ins, random unit vectors with random
    labels, play the other ranks' gathered views. Fused: the anchor-block op; reference: the materialized
    [M, N] block (what a rank materializes under gather=True with impl='reference').
    """
    extra: dict = {}
    temperature = criterion_kwargs.get("temperature", 0.1)
    variant = criterion_kwargs.get("variant", "out")
    fused = criterion_kwargs.get("impl", "auto") != "reference"

    def criterion(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = flatten_views(features)
        m = z.shape[0]
        if contrast_n < m:
            raise ValueError(f"contrast_n: must be >= the local views ({m}), got {contrast_n}")
        if "z" not in extra:
            g = torch.Generator(device="cpu").manual_seed(seed)
            others = torch.nn.functional.normalize(torch.randn(contrast_n - m, z.shape[1], generator=g), dim=1)
            extra["z"] = others.to(device=z.device, dtype=z.dtype)
            extra["y"] = torch.randint(0, num_classes, (contrast_n - m,), generator=g).to(z.device)
        zz = torch.cat([z, extra["z"]])
        yy = torch.cat([labels.repeat(features.shape[1]), extra["y"]])
        per_anchor, npos = anchor_block_terms(zz, yy, 0, m, temperature=temperature, variant=variant, fused=fused)
        return masked_mean(per_anchor, npos > 0)

    return criterion


def criterion_and_feeder(model, loss: str, kwargs: dict, *, contrast_n, queue: int, queue_momentum: float,
                         num_classes: int, amp, loss_dtype, device):
    """The profiled step's criterion and, with ``queue`` rows, the queue's feeder (engine/momentum.py)
    over a queue already full of random unit rows (a queue at its steady state)."""
    feeder = None
    if loss != "ce" and queue:
        if contrast_n:
            raise ValueError("queue: not with contrast_n (the stand-in contrast set takes no queue)")
        q = random_queue(queue, FEAT_DIM, dtype=loss_dtype, device=device, num_classes=num_classes)
        feeder = QueueFeeder(q, MomentumEncoder(model, queue_momentum), use_labels=loss == "supcon", amp=amp,
                             loss_dtype=loss_dtype)
    if loss != "ce" and contrast_n:
        return stand_in_contrast_criterion(kwargs, contrast_n, num_classes, device), None
    return make_criterion(loss, queue=feeder.queue if feeder else None, **kwargs), feeder


class _Hooks(contextlib.AbstractContextManager):
    """Puts the clock's marks on the real model, criterion and optimizer; removes them on exit."""

    def __init__(self, clock: Clock, model, optimizer):
        self.clock, self.handles = clock, []
        self.handles.append(model.encoder.register_forward_hook(lambda *a: clock.mark("encoder_end")))
        self.handles.append(optimizer.register_step_pre_hook(lambda *a: clock.mark("opt_start")))
        self.handles.append(optimizer.register_step_post_hook(lambda *a: clock.mark("opt_end")))

    def wrap(self, criterion):
        clock = self.clock

        def timed(features, labels):
            clock.mark("loss_start")
            if features.requires_grad:
                features.register_hook(lambda g: clock.mark("loss_bwd_end"))
            loss = criterion(features, labels)
            clock.mark("loss_fwd_end")
            loss.register_hook(lambda g: clock.mark("bwd_start"))
            return loss
        return timed

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def profile_config(*, loss: str, arch: str, image_size: int, batch_size: int, views: int, steps: int,
                   warmup: int, device: torch.device, amp: str = "fp32", loss_dtype: str = "auto",
                   channels_last: bool = False,
                   loss_impl: str = "fused", contrast_n: int | None = None, stem: str = "imagenet", width: int = 64,
                   num_classes: int = 1000, optimizer: str = "sgd", loader=None, trace_dir: str | None = None,
                   queue: int = 0, queue_momentum: float = 0.999) -> dict:
    """Profiles ``steps`` training steps (after ``warmup``) of one configuration; medians and spreads in ms.

    ``amp`` and ``loss_dtype`` resolve as in the trainer (engine/precision.py); ``queue`` and
    ``queue_momentum`` as the trainer's --queue and --queue-momentum (SupCon / SimCLR only).
    """
    torch.manual_seed(0)
    model = build_model(arch, stem=stem, width=width, head="mlp", feat_dim=FEAT_DIM, loss=loss,
                        num_classes=num_classes, channels_last=channels_last).to(device)
    opt = build_optimizer(model, optimizer, 0.1, weight_decay=1e-4)
    sched = WarmupCosine(opt, total_steps=warmup + steps, warmup_steps=0, peak=0.1)
    amp_t = amp_dtype(amp, device)
    loss_t = resolve_loss_dtype(loss_dtype, amp_t, loss)
    kwargs = dict(temperature=0.1, impl="reference" if loss_impl == "reference" else "auto")
    criterion, feeder = criterion_and_feeder(model, loss, kwargs, contrast_n=contrast_n, queue=queue,
                                             queue_momentum=queue_momentum, num_classes=num_classes, amp=amp_t,
                                             loss_dtype=loss_t, device=device)
    if loader is None:
        loader = SyntheticLoader(batch_size=batch_size, n_views=views, size=image_size, num_classes=num_classes,
                                 steps=warmup + steps, device=device, channels_last=channels_last)
    clock = Clock(device)
    scaler = grad_scaler(amp_t, loss_t, device)
    peak = 0
    with _Hooks(clock, model, opt) as hooks:
        step = TrainStep(model, hooks.wrap(criterion), opt, sched, loss_kind="ce" if loss == "ce" else "supcon",
                         amp=amp_t, loss_dtype=loss_t, scaler=scaler, feeder=feeder)
        records = _timed_steps(step, clock, loader, device=device, warmup=warmup, steps=steps, trace_dir=trace_dir)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    keys = list(PHASES) + ["step"]
    return {
        "phases_ms": {k: statistics.median(r[k] for r in records) for k in PHASES},
        "phases_spread_ms": {k: [min(r[k] for r in records), max(r[k] for r in records)] for k in keys},
        "step_ms": statistics.median(r["step"] for r in records),
        "steps": len(records), "images": batch_size, "views": views, "loss_dtype": dtype_name(loss_t),
        "queue": len(feeder.queue) if feeder else 0,
        "peak_mem_bytes": peak if device.type == "cuda" else None,
    }


def _timed_steps(step: TrainStep, clock: Clock, loader, *, device: torch.device, warmup: int, steps: int,
                 trace_dir: str | None) -> list[dict]:
    """Runs ``warmup + steps`` steps (the loader restarted when it ends); the phases of the timed ones."""
    records, prof = [], None
    it = iter(loader)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            if trace_dir:
                prof = torch.profiler.profile(on_trace_ready=torch.profiler.tensorboard_trace_handler(trace_dir))
                prof.__enter__()
        clock.mark("start")
        try:
            views_, labels = next(it)
        except StopIteration:
            it = iter(loader)
            views_, labels = next(it)
        views_ = [v.to(device, non_blocking=True) for v in views_]
        labels = labels.to(device, non_blocking=True)
        clock.mark("data")
        step(views_, labels)
        clock.mark("feed_end")
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            records.append(phases_ms(clock))
    if prof is not None:
        prof.__exit__(None, None, None)
    return records


def profile(*, arch="resnet50", image_size=224, batch_size=64, views=2, steps=10, warmup=3, device="cpu",
            amp="fp32", loss_dtype="auto", channels_last=False, loss_impl="fused", contrast_n=None, stem="imagenet",
            width=64, num_classes=1000, trace_dir=None, loader_factory=None, queue=0, queue_momentum=0.999,
            progress=print) -> dict:
    """SupCon (``views`` views of ``batch_size`` images; with a queue of ``queue`` rows) against CE on the
    same images and on the same views."""
    dev = torch.device(device)
    common = dict(arch=arch, image_size=image_size, steps=steps, warmup=warmup, device=dev, amp=amp,
                  channels_last=channels_last, stem=stem, width=width, num_classes=num_classes)
    runs = {
        "supcon": dict(loss="supcon", batch_size=batch_size, views=views, loss_impl=loss_impl, contrast_n=contrast_n,
                       loss_dtype=loss_dtype, trace_dir=trace_dir, queue=queue, queue_momentum=queue_momentum),
        "ce_same_images": dict(loss="ce", batch_size=batch_size, views=1),
        "ce_same_views": dict(loss="ce", batch_size=batch_size, views=views),  # every view is a CE sample
    }
    out = {}
    for name, kw in runs.items():
        loader = loader_factory(kw["batch_size"], kw["views"]) if loader_factory else None
        out[name] = profile_config(**common, **kw, loader=loader)
        progress(f"{name:>15}: step {out[name]['step_ms']:.1f} ms  " +
                 "  ".join(f"{k} {v:.1f}" for k, v in out[name]["phases_ms"].items()))
    sup = out["supcon"]
    out.update({
        "ratio_supcon_over_ce_same_images": sup["step_ms"] / out["ce_same_images"]["step_ms"],
        "ratio_supcon_over_ce_same_views": sup["step_ms"] / out["ce_same_views"]["step_ms"],
        "loss_share": sup["phases_ms"]["loss"] / sup["step_ms"],
        "config": dict(arch=arch, image_size=image_size, batch_size=batch_size, views=views, steps=steps,
                       warmup=warmup, amp=amp, loss_dtype=sup["loss_dtype"], channels_last=channels_last,
                       loss_impl=loss_impl, contrast_n=contrast_n or batch_size * views, stem=stem, width=width,
                       data="loader" if loader_factory else "synthetic", queue=queue,
                       queue_momentum=queue_momentum if queue else None),
        "device": str(dev), "device_name": machine_info(dev.type).get("gpu" if dev.type == "cuda" else "cpu"),
        "machine": machine_info(dev.type), "torch": torch.__version__, "commit": git_commit(),
        "date": utc_now(),
    })
    return out


def markdown(result: dict) -> str:
    """The phases of the three runs side by side, in ms."""
    names = ["supcon", "ce_same_images", "ce_same_views"]
    lines = ["| phase | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in PHASES:
        lines.append(f"| {k} | " + " | ".join(f"{result[n]['phases_ms'][k]:.1f}" for n in names) + " |")
    lines.append("| **step** | " + " | ".join(f"**{result[n]['step_ms']:.1f}**" for n in names) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """Stacked bars of the phases, one group of three bars (SupCon, CE same images, CE same views) per result."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = ["supcon", "ce_same_images", "ce_same_views"]
    fig, ax = plt.subplots(figsize=(max(6, 3.2 * len(results)), 4.5))
    colors = plt.get_cmap("tab10").colors
    short = {"supcon": "SupCon", "ce_same_images": "CE\n=images", "ce_same_views": "CE\n=views"}
    x, ticks, labels = 0.0, [], []
    for res in results:
        c = res["config"]
        for n in names:
            bottom = 0.0
            for i, k in enumerate(PHASES):
                v = res[n]["phases_ms"][k]
                ax.bar(x, v, bottom=bottom, color=colors[i], width=0.8, label=k if x == 0 else None)
                bottom += v
            ticks.append(x)
            queue = f" K={c['queue']}" if c.get("queue") else ""
            what = f"\n{c['arch']} {c['loss_impl']}\nN={c['contrast_n']}{queue}"
            labels.append(short[n] + (what if n == "supcon" else ""))
            x += 1
        x += 0.6
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylabel("ms per step (median)")
    ax.set_title(f"Step cost by phase ({results[0]['device_name']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
