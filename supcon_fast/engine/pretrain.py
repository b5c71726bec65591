"""The pretraining loop: SupCon / SimCLR / cross-entropy, with checkpoints, exact resume, signals, kNN monitor."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from . import checkpoint as ckpt, precision
from .features import extract, knn_accuracy
from .losses import make_criterion
from .optim import WarmupCosine, build_optimizer
from .runtime import Runtime, barrier
from .step import TrainStep
from ..models import build_model


class NonFiniteLossError(RuntimeError):
    pass


class StopFlag:
    """SIGTERM / SIGINT set a flag; the loop checks it after each step, checkpoints and returns.

    Handlers are installed only for the loop's duration and the previous ones restored afterwards.
    """

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def build_pretrain_model(cfg: dict, num_classes: int, rt: Runtime) -> torch.nn.Module:
    model = build_model(cfg["arch"], stem=cfg["stem"], width=cfg["width"], head=cfg["head"],
                        feat_dim=cfg["feat_dim"], loss=cfg["loss"], num_classes=num_classes,
                        channels_last=cfg["channels_last"], sync_bn=cfg["sync_bn"] and rt.distributed)
    return model.to(rt.device)


# a checkpoint cannot load into a different model / optimizer; these keys must match to resume
_MUST_MATCH = ("arch", "stem", "width", "head", "feat_dim", "loss", "optimizer")
# these may change, but then the run no longer continues the original one exactly
_SHOULD_MATCH = ("batch_size", "views", "size", "epochs", "lr", "seed", "data", "temperature", "policy",
                 "loss_dtype")


def _check_resume_config(saved: dict, cfg: dict, logger) -> None:
    for key in _MUST_MATCH:
        if key in saved and saved[key] != cfg[key]:
            raise ValueError(f"resume: the checkpoint has {key}={saved[key]!r} but this run has {key}={cfg[key]!r}")
    changed = [f"{k}: {saved[k]!r} -> {cfg[k]!r}" for k in _SHOULD_MATCH if k in saved and saved[k] != cfg[k]]
    if changed:
        logger.info("warning: resuming with changed options (not an exact continuation): " + ", ".join(changed))


def _stop_votes(rt: Runtime, stop: bool) -> bool:
    """Every rank stops at the same step: a signal may reach ranks between different steps."""
    if not rt.distributed:
        return stop
    t = torch.tensor([int(stop)], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def pretrain(cfg: dict, rt: Runtime, loaders, out_dir: str | Path, logger, *, on_step=None) -> dict:
    """Run (or resume) pretraining. Returns {"status": "done"|"interrupted", "model": unwrapped model, ...}.

    ``on_step(step, loss)`` is called after every step (tests use it to send signals; profilers to time).
    """
    out_dir = Path(out_dir)
    model = build_pretrain_model(cfg, loaders.num_classes, rt)
    raw = model
    world_batch = cfg["batch_size"]
    peak = cfg["lr"] * world_batch / 256
    optimizer = build_optimizer(model, cfg["optimizer"], peak, momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    spe = len(loaders.train)
    total = cfg["epochs"] * spe
    scheduler = WarmupCosine(optimizer, total, int(round(cfg["warmup_epochs"] * spe)), peak,
                             cfg["min_lr"] * world_batch / 256)
    amp, loss_dtype = precision.resolve(cfg, rt.device)
    scaler = precision.grad_scaler(amp, loss_dtype, rt.device)

    epoch, step, in_epoch, best_knn = 0, 0, 0, -1.0
    resume = ckpt.resolve_resume(cfg["resume"], out_dir)
    if resume is not None:
        state = ckpt.load(resume, map_location=rt.device)
        _check_resume_config(state.get("config", {}), cfg, logger)
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        epoch, step, in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        best_knn = state.get("best_knn", -1.0)
        ckpt.set_rng_state(state["rng"])
        states = state.get("loader") or []
        own = states[rt.rank] if len(states) == rt.world else None
        if in_epoch:
            # the loader's own state when it has one (DALI restores its readers from it), else replay
            if own and hasattr(loaders.train, "load_state_dict"):
                loaders.train.load_state_dict(own)
            else:
                loaders.train.set_epoch(epoch)
                loaders.train.skip_batches(in_epoch)
        elif own and cfg["skip_corrupt"] and hasattr(loaders.train, "exclusions"):
            loaders.train.exclusions.load(own.get("excluded"))   # files found bad stay out (and listed)
        logger.info(f"resumed from {resume}: epoch {epoch}, step {step} ({in_epoch} into the epoch)")

    if rt.distributed:
        model = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                    broadcast_buffers=False)
    if cfg["compile"]:
        model = torch.compile(model)
    criterion = make_criterion(cfg["loss"], temperature=cfg["temperature"], base_temperature=cfg["base_temperature"],
                               variant=cfg["variant"], impl=cfg["loss_impl"], gather=rt.distributed)
    train_step = TrainStep(model, criterion, optimizer, scheduler, loss_kind=cfg["loss"], amp=amp,
                           loss_dtype=loss_dtype, scaler=scaler)

    def save(name: str, epoch_: int, in_epoch_: int) -> None:
        """Called on every rank (the loader states of all ranks are collected); rank 0 writes."""
        loader_states = [loaders.train.state_dict() if hasattr(loaders.train, "state_dict") else None]
        if rt.distributed:
            loader_states = [None] * rt.world
            dist.all_gather_object(loader_states, loaders.train.state_dict()
                                   if hasattr(loaders.train, "state_dict") else None)
        if rt.is_main:
            state = {"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                     "epoch": epoch_, "step": step, "step_in_epoch": in_epoch_, "best_knn": best_knn,
                     "rng": ckpt.rng_state(), "config": dict(cfg), "num_classes": loaders.num_classes}
            state["loader"] = loader_states       # one per rank: each rank's own reader position
            ckpt.save_atomic(state, out_dir / name)
        barrier()

    max_steps = min(total, cfg["max_steps"]) if cfg["max_steps"] else total
    views_per_step = world_batch * cfg["views"]
    nonfinite, status = 0, "done"
    logger.start_bar(max_steps, initial=step, desc=f"pretrain ({cfg['loss']})")
    t_log, n_log = time.perf_counter(), 0
    with StopFlag() as stop:
        while epoch < cfg["epochs"] and step < max_steps:
            loaders.train.set_epoch(epoch)   # keeps a pending mid-epoch resume position of this epoch
            raw.train()
            for views, labels in loaders.train:
                loss, ok = train_step(views, labels)
                step += 1
                in_epoch += 1
                n_log += 1
                if ok:
                    nonfinite = 0
                else:
                    nonfinite += 1
                    logger.info(f"step {step}: non-finite loss {loss.item()}, update skipped")
                    if scaler is None and nonfinite >= cfg["max_nonfinite"]:
                        raise NonFiniteLossError(
                            f"step {step}: {nonfinite} consecutive non-finite losses; stopping. The last good "
                            f"checkpoint is {out_dir / 'last.pt'} (try a lower --lr, or --amp fp32 "
                            f"--loss-dtype fp32)")
                if on_step is not None:
                    on_step(step, loss)
                if step % cfg["log_every"] == 0 or step == max_steps:
                    dt = time.perf_counter() - t_log
                    vps = n_log * views_per_step / max(dt, 1e-9)
                    loss_v = loss.item()
                    logger.metrics("train", step, epoch=epoch, loss=loss_v, lr=scheduler.lr, views_per_s=vps)
                    logger.update_bar(n_log, loss=f"{loss_v:.4f}", lr=f"{scheduler.lr:.3g}", views_s=f"{vps:.0f}")
                    t_log, n_log = time.perf_counter(), 0
                stopping = _stop_votes(rt, stop.signum is not None)
                periodic = cfg["ckpt_every"] and step % cfg["ckpt_every"] == 0 and not nonfinite
                if stopping or periodic or step >= max_steps:   # no routine save inside a non-finite streak
                    done_epoch = in_epoch == spe
                    save("last.pt", epoch + done_epoch, 0 if done_epoch else in_epoch)
                if stopping:
                    status = "interrupted"
                    logger.info(f"signal {stop.signum or 'on another rank'}: checkpoint written at step {step}, "
                                f"resume with --resume auto --out {out_dir}")
                    break
                if step >= max_steps:
                    break
            if status == "interrupted":
                break
            if in_epoch < spe:      # stopped by max_steps mid-epoch
                break
            epoch, in_epoch = epoch + 1, 0
            knn = None
            if cfg["knn_every"] and (epoch % cfg["knn_every"] == 0 or epoch == cfg["epochs"]):
                knn = run_knn(raw, loaders, cfg, amp)
                logger.metrics("eval", step, epoch=epoch, knn_top1=knn)
                logger.info(f"epoch {epoch}: kNN top-1 (val) {knn:.2f}%")
            if not nonfinite:
                save("last.pt", epoch, 0)
            if knn is not None and knn > best_knn:
                best_knn = knn
                save("best.pt", epoch, 0)
    logger.close_bar()
    return {"status": status, "model": raw, "step": step, "epoch": epoch, "best_knn": best_knn,
            "amp": amp, "loss_dtype": loss_dtype, "steps_per_epoch": spe}


def run_knn(model, loaders, cfg: dict, amp) -> float:
    encoder = model.encoder
    tr_f, tr_y = extract(encoder, loaders.knn_bank, amp=amp)
    va_f, va_y = extract(encoder, loaders.val, amp=amp)
    model.train()
    return knn_accuracy(tr_f, tr_y, va_f, va_y, k=cfg["knn_k"])
