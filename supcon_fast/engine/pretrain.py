"""The pretraining loop: SupCon / SimCLR / cross-entropy, with checkpoints, exact resume, signals, kNN monitor."""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from . import checkpoint as ckpt, precision
from .features import extract, knn_accuracy
from .losses import make_criterion
from .momentum import build_feeder
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
                 "loss_dtype", "queue", "queue_momentum", "denominator", "positives_cap")


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


@dataclass
class Progress:
    """Where a run stands: what a checkpoint stores besides the model, optimizer and RNG states."""
    epoch: int = 0
    step: int = 0            # steps done in all
    in_epoch: int = 0        # steps done in the current epoch
    best_knn: float = -1.0
    nonfinite: int = 0       # consecutive non-finite losses


class Pretraining:
    """One pretraining run: built from the config, resumed from a checkpoint where one is given, then
    ``run()``. Each method does one thing; ``run`` reads as the loop itself."""

    def __init__(self, cfg: dict, rt: Runtime, loaders, out_dir: str | Path, logger):
        self.cfg, self.rt, self.loaders, self.out_dir, self.logger = cfg, rt, loaders, Path(out_dir), logger
        self.raw = build_pretrain_model(cfg, loaders.num_classes, rt)   # unwrapped: what is saved
        batch = cfg["batch_size"]
        peak = cfg["lr"] * batch / 256
        self.optimizer = build_optimizer(self.raw, cfg["optimizer"], peak, momentum=cfg["momentum"],
                                         weight_decay=cfg["weight_decay"])
        self.steps_per_epoch = len(loaders.train)
        total = cfg["epochs"] * self.steps_per_epoch
        self.scheduler = WarmupCosine(self.optimizer, total, int(round(cfg["warmup_epochs"] * self.steps_per_epoch)),
                                      peak, cfg["min_lr"] * batch / 256)
        self.max_steps = min(total, cfg["max_steps"]) if cfg["max_steps"] else total
        self.amp, self.loss_dtype = precision.resolve(cfg, rt.device)
        self.scaler = precision.grad_scaler(self.amp, self.loss_dtype, rt.device)
        # --queue: the loss's queue and what feeds it after each step (None when off)
        self.feeder = build_feeder(cfg, self.raw, rt.device, amp=self.amp, loss_dtype=self.loss_dtype)
        self.progress = Progress()
        self.status = "done"

    def resume(self) -> None:
        """Load the model, optimizer, schedule, scaler, RNG and loader states of ``--resume``, if any."""
        path = ckpt.resolve_resume(self.cfg["resume"], self.out_dir)
        if path is None:
            return
        state = ckpt.load(path, map_location=self.rt.device)
        _check_resume_config(state.get("config", {}), self.cfg, self.logger)
        self.raw.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        p = self.progress
        p.epoch, p.step, p.in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        p.best_knn = state.get("best_knn", -1.0)
        ckpt.set_rng_state(state["rng"])
        self._restore_loader(state.get("loader") or [])
        self._restore_queue(state)
        self.logger.info(f"resumed from {path}: epoch {p.epoch}, step {p.step} ({p.in_epoch} into the epoch)")

    def _restore_loader(self, states: list) -> None:
        """This rank's loader state (position and files left out); where the world size changed, a
        replay of the epoch's first batches instead."""
        own = states[self.rt.rank] if len(states) == self.rt.world else None
        train, p = self.loaders.train, self.progress
        if own and (p.in_epoch or self.cfg["skip_corrupt"]):
            train.load_state_dict(own)       # at an epoch's end only the excluded files matter
        elif p.in_epoch:
            train.set_epoch(p.epoch)
            train.skip_batches(p.in_epoch)

    def _restore_queue(self, state: dict) -> None:
        """The queue and the momentum copy. A checkpoint without a queue (or of another size) starts an
        empty one, and without a momentum copy it starts from the online weights."""
        if self.feeder is None:
            return
        saved, queue = state.get("queue"), self.feeder.queue
        if saved is not None and saved["size"] == queue.size:
            queue.load_state_dict(saved)
        else:
            self.logger.info(f"warning: the checkpoint holds no queue of {queue.size} rows; it starts empty")
        self.feeder.encoder.load_state_dict(state.get("momentum_model"))

    def _queue_state(self) -> dict:
        """The checkpoint's queue entries (none without --queue)."""
        if self.feeder is None:
            return {}
        return {"queue": self.feeder.queue.state_dict(), "momentum_model": self.feeder.encoder.state_dict()}

    def save(self, name: str, epoch: int, in_epoch: int) -> None:
        """Called on every rank (the loader states of all ranks are collected); rank 0 writes."""
        loader_states = [self.loaders.train.state_dict()]
        if self.rt.distributed:
            loader_states = [None] * self.rt.world
            dist.all_gather_object(loader_states, self.loaders.train.state_dict())
        if self.rt.is_main:
            p = self.progress
            state = {"model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict() if self.scaler else None,
                     "epoch": epoch, "step": p.step, "step_in_epoch": in_epoch, "best_knn": p.best_knn,
                     "rng": ckpt.rng_state(), "config": dict(self.cfg), "num_classes": self.loaders.num_classes,
                     "loader": loader_states,       # one per rank: each rank's own reader position
                     **self._queue_state()}
            ckpt.save_atomic(state, self.out_dir / name)
        barrier()

    def build_step(self) -> TrainStep:
        """The training step around the (DDP-wrapped, compiled) model."""
        cfg, model = self.cfg, self.raw
        if self.rt.distributed:
            model = DDP(model, device_ids=[self.rt.device.index] if self.rt.device.type == "cuda" else None,
                        broadcast_buffers=False)
            if self.feeder is not None:
                self.feeder.encoder.broadcast()   # rank 0's copy, as DDP gave every rank rank 0's weights
        if cfg["compile"]:
            model = torch.compile(model)
        queue = self.feeder.queue if self.feeder else None
        criterion = make_criterion(cfg["loss"], temperature=cfg["temperature"], base_temperature=cfg["base_temperature"],
                                   variant=cfg["variant"], impl=cfg["loss_impl"], gather=self.rt.distributed,
                                   queue=queue, denominator=cfg["denominator"], positives_cap=cfg["positives_cap"])
        return TrainStep(model, criterion, self.optimizer, self.scheduler, loss_kind=cfg["loss"], amp=self.amp,
                         loss_dtype=self.loss_dtype, scaler=self.scaler, feeder=self.feeder)

    def run(self, on_step=None) -> dict:
        """Pretrain to the end (or ``--max-steps``, or a signal). ``on_step(step, loss)`` is called after
        every step (tests use it to send signals; profilers to time)."""
        train_step, p = self.build_step(), self.progress
        self.logger.start_bar(self.max_steps, initial=p.step, desc=f"pretrain ({self.cfg['loss']})")
        self.meter = Throughput(self.cfg["batch_size"] * self.cfg["views"])
        with StopFlag() as stop:
            while p.epoch < self.cfg["epochs"] and p.step < self.max_steps:
                self.run_epoch(train_step, stop, on_step)
                if self.status == "interrupted" or p.in_epoch < self.steps_per_epoch:
                    break                     # a signal, or --max-steps mid-epoch
                self.end_epoch()
        self.logger.close_bar()
        return {"status": self.status, "model": self.raw, "step": p.step, "epoch": p.epoch,
                "best_knn": p.best_knn, "amp": self.amp, "loss_dtype": self.loss_dtype,
                "steps_per_epoch": self.steps_per_epoch}

    def run_epoch(self, train_step: TrainStep, stop: StopFlag, on_step) -> None:
        """The steps of one epoch, from where it stands; stops early at max_steps or a signal."""
        p = self.progress
        self.loaders.train.set_epoch(p.epoch)   # keeps a pending mid-epoch resume position of this epoch
        self.raw.train()
        for views, labels in self.loaders.train:
            loss, ok = train_step(views, labels)
            p.step += 1
            p.in_epoch += 1
            self.count_nonfinite(loss, ok)
            if on_step is not None:
                on_step(p.step, loss)
            self.log_step(loss)
            if self.checkpoint_step(stop) or p.step >= self.max_steps:
                return

    def count_nonfinite(self, loss: torch.Tensor, ok: bool) -> None:
        """Count consecutive non-finite losses; without a GradScaler too many stop the run."""
        p = self.progress
        if ok:
            p.nonfinite = 0
            return
        p.nonfinite += 1
        self.logger.info(f"step {p.step}: non-finite loss {loss.item()}, update skipped")
        if self.scaler is None and p.nonfinite >= self.cfg["max_nonfinite"]:
            raise NonFiniteLossError(
                f"step {p.step}: {p.nonfinite} consecutive non-finite losses; stopping. The last good "
                f"checkpoint is {self.out_dir / 'last.pt'} (try a lower --lr, or --amp fp32 --loss-dtype fp32)")

    def log_step(self, loss: torch.Tensor) -> None:
        """Every --log-every steps (and the last): loss, lr and throughput to the logs and the bar."""
        step = self.progress.step
        self.meter.count()
        if step % self.cfg["log_every"] and step != self.max_steps:
            return
        n, vps = self.meter.rate()
        loss_v, lr = loss.item(), self.scheduler.lr
        self.logger.metrics("train", step, epoch=self.progress.epoch, loss=loss_v, lr=lr, views_per_s=vps)
        self.logger.update_bar(n, loss=f"{loss_v:.4f}", lr=f"{lr:.3g}", views_s=f"{vps:.0f}")

    def checkpoint_step(self, stop: StopFlag) -> bool:
        """Save where a signal, --ckpt-every or the last step asks; True when a signal stops the run."""
        p, cfg = self.progress, self.cfg
        stopping = _stop_votes(self.rt, stop.signum is not None)
        periodic = cfg["ckpt_every"] and p.step % cfg["ckpt_every"] == 0 and not p.nonfinite
        if stopping or periodic or p.step >= self.max_steps:   # no routine save inside a non-finite streak
            done_epoch = p.in_epoch == self.steps_per_epoch
            self.save("last.pt", p.epoch + done_epoch, 0 if done_epoch else p.in_epoch)
        if stopping:
            self.status = "interrupted"
            self.logger.info(f"signal {stop.signum or 'on another rank'}: checkpoint written at step {p.step}, "
                             f"resume with --resume auto --out {self.out_dir}")
        return stopping

    def end_epoch(self) -> None:
        """After a whole epoch: the kNN monitor when due, then last.pt (and best.pt on a better kNN)."""
        p, cfg = self.progress, self.cfg
        p.epoch, p.in_epoch = p.epoch + 1, 0
        knn = None
        if cfg["knn_every"] and (p.epoch % cfg["knn_every"] == 0 or p.epoch == cfg["epochs"]):
            knn = run_knn(self.raw, self.loaders, cfg, self.amp)
            self.logger.metrics("eval", p.step, epoch=p.epoch, knn_top1=knn)
            self.logger.info(f"epoch {p.epoch}: kNN top-1 (val) {knn:.2f}%")
        if not p.nonfinite:
            self.save("last.pt", p.epoch, 0)
        if knn is not None and knn > p.best_knn:
            p.best_knn = knn
            self.save("best.pt", p.epoch, 0)


class Throughput:
    """Views per second over the steps since the last report."""

    def __init__(self, views_per_step: int):
        self.views_per_step, self.n, self.t0 = views_per_step, 0, time.perf_counter()

    def count(self) -> None:
        self.n += 1

    def rate(self) -> tuple[int, float]:
        """(steps since the last report, views/s over them); starts the next interval."""
        now = time.perf_counter()
        n, vps = self.n, self.n * self.views_per_step / max(now - self.t0, 1e-9)
        self.n, self.t0 = 0, now
        return n, vps


def pretrain(cfg: dict, rt: Runtime, loaders, out_dir: str | Path, logger, *, on_step=None) -> dict:
    """Run (or resume) pretraining. Returns {"status": "done"|"interrupted", "model": unwrapped model, ...}.

    ``on_step(step, loss)`` is called after every step (tests use it to send signals; profilers to time).
    """
    job = Pretraining(cfg, rt, loaders, out_dir, logger)
    job.resume()
    return job.run(on_step)


def run_knn(model, loaders, cfg: dict, amp) -> float:
    encoder = model.encoder
    tr_f, tr_y = extract(encoder, loaders.knn_bank, amp=amp)
    va_f, va_y = extract(encoder, loaders.val, amp=amp)
    model.train()
    return knn_accuracy(tr_f, tr_y, va_f, va_y, k=cfg["knn_k"])
