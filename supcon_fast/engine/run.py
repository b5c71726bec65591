"""A whole job: set up, pretrain, linear-evaluate, plot; returns the summary that tools/train.py prints.

The summary and metrics.jsonl (a ``"run"`` record at the start, a ``"summary"`` record at the end)
say what actually ran, not what was asked for: the device, the network's autocast dtype (``amp``;
``float32`` when autocast is off) and the loss input dtype, the dataset (its kind, absolute root and
numbers of train / val images), the data backend the loaders report (``torch`` when
``--backend auto`` fell back from DALI), the queue (``queue`` rows, 0: none; ``queue_momentum``,
None without a queue), and for the contrastive losses the denominator mode, the positives cap and the
``loss_path`` taken (``fused`` or ``reference``).
"""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import torch

from . import config as config_mod
from ..loss import loss_path
from ..provenance import git_commit, utc_now
from .data import Loaders, build_loaders, ensure_dataset, skipped_files
from .linear_eval import linear_eval, topk_accuracy
from .logger import Logger, plot_curves
from .pretrain import pretrain
from .precision import dtype_name, resolve as resolve_precision
from .runtime import Runtime, barrier, seed_all, setup, teardown


def default_out(cfg: dict) -> str:
    name = Path(cfg["config"]).stem
    return str(Path("runs") / f"{name}-{cfg['loss']}-{datetime.now():%Y%m%d-%H%M%S}")


def run_info(cfg: dict, rt: Runtime, loaders: Loaders) -> dict:
    """Device, dtypes and data of this run as they are resolved (the summary's and metrics.jsonl's facts)."""
    amp, loss_dtype = resolve_precision(cfg, rt.device)
    info = {"device": str(rt.device), "world": rt.world}
    if rt.device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(rt.device)
    info.update(amp=dtype_name(amp or torch.float32), loss_dtype=dtype_name(loss_dtype), **loaders.describe())
    # the queue as it runs: its momentum only matters with a queue
    queue = cfg.get("queue", 0)
    info.update(queue=queue, queue_momentum=cfg.get("queue_momentum") if queue else None)
    if cfg["loss"] != "ce":   # the path the loss takes here (the reference where no fused kernel exists)
        info.update(denominator=cfg["denominator"], positives_cap=cfg["positives_cap"],
                    loss_path=loss_path(rt.device, cfg["loss_impl"]))
    info["commit"] = git_commit()  # at the start: the code this process loaded, not the checkout's later HEAD
    return info


def _prepare(cfg: dict, rt: Runtime) -> dict:
    """Checks that need the runtime, and the values every rank must agree on (out folder, loss dtype)."""
    if rt.distributed and cfg["batch_size"] % rt.world:
        raise ValueError(f"batch_size: global batch {cfg['batch_size']} is not divisible by the "
                         f"world size {rt.world}")
    if not cfg["out"]:
        # every rank must agree on the folder: rank 0 names it, the others receive it
        obj = [default_out(cfg)]
        if rt.distributed:
            torch.distributed.broadcast_object_list(obj, src=0)
        cfg = {**cfg, "out": obj[0]}
    # the resolved config records the loss dtype as torch names it ('auto' depends on the device)
    return {**cfg, "loss_dtype": dtype_name(resolve_precision(cfg, rt.device)[1])}


def _evaluate(cfg: dict, rt: Runtime, res: dict, loaders: Loaders, out: Path, logger) -> dict:
    """The finished model's accuracies: a CE model's own classifier, then the linear probe."""
    model, scores = res["model"], {}
    if cfg["loss"] == "ce":
        model.eval()
        with torch.no_grad():
            logits, labels = zip(*((model(x).float(), y) for x, y in loaders.val))
        top1, top5 = topk_accuracy(torch.cat(logits), torch.cat(labels))
        scores.update(ce_top1=round(top1, 3), ce_top5=round(top5, 3))
    if cfg["linear_epochs"]:
        logger.info(f"linear evaluation: {cfg['linear_epochs']} epochs on frozen features")
        scores.update(linear_eval(model.encoder, loaders.train_eval, loaders.val,
                                  num_classes=loaders.num_classes, epochs=cfg["linear_epochs"],
                                  lr=cfg["linear_lr"], batch_size=cfg["linear_batch_size"],
                                  holdout=cfg["linear_holdout"], seed=cfg["seed"], amp=res["amp"],
                                  logger=logger, head_path=out / "linear_head.pt" if rt.is_main else None))
    return scores


def _finish(summary: dict, res: dict, out: Path, logger) -> None:
    """Rank 0: the summary record, then the curves (a plotting failure must not lose a finished run)."""
    logger.metrics("summary", res["step"], **{k: v for k, v in summary.items() if k != "status"})
    logger.close()
    try:
        plot_curves(out / "metrics.jsonl", out / "curves.png")
        summary["plot"] = str(out / "curves.png")
    except Exception as e:
        print(f"warning: plotting failed: {e}")


def run(cfg: dict, *, on_step=None) -> dict:
    """Pretrain then linear-evaluate as ``cfg`` says. Returns the summary dict (``linear_top1``, ...)."""
    t0 = time.perf_counter()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    rt = setup(cfg["device"])
    try:
        cfg = _prepare(cfg, rt)
        ensure_dataset(cfg, rt.rank)     # a bad --data fails here, before the run folder is made
        out = Path(cfg["out"])
        if rt.is_main:
            out.mkdir(parents=True, exist_ok=True)
            config_mod.save(cfg, out)
        barrier()
        seed_all(cfg["seed"] + rt.rank)
        logger = Logger(out, rank=rt.rank, tensorboard=cfg["tensorboard"])
        loaders = build_loaders(cfg, rank=rt.rank, world=rt.world, device=rt.device)
        info = run_info(cfg, rt, loaders)
        logger.record("run", 0, **info, config=cfg["config"], backend_requested=cfg["backend"])
        logger.info(f"out {out} | device {rt.device} x{rt.world} | data {info['data_root']} ({info['dataset']}, "
                    f"{info['data_backend']}, {len(loaders.train)} steps/epoch) | {cfg['arch']} width "
                    f"{cfg['width']} | loss {cfg['loss']} ({info['loss_dtype']})")
        res = pretrain(cfg, rt, loaders, out, logger, on_step=on_step)
        summary = {"status": res["status"], "out": str(out), **info, "steps": res["step"], "epochs": res["epoch"],
                   "best_knn_top1": res["best_knn"] if res["best_knn"] >= 0 else None}
        if res["status"] == "done":
            summary.update(_evaluate(cfg, rt, res, loaders, out, logger))
        if cfg["skip_corrupt"]:  # all ranks: the list is gathered
            summary["skipped_files"] = skipped_files(loaders, rt.distributed)
        summary["wall_s"] = round(time.perf_counter() - t0, 1)
        summary.update(date=utc_now(), torch=torch.__version__)  # where the result came from (commit: run_info)
        if rt.is_main:
            _finish(summary, res, out, logger)
        barrier()
        return summary
    finally:
        teardown()
