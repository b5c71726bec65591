"""A whole job: set up, pretrain, linear-evaluate, plot; returns the summary that tools/train.py prints."""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import torch

from . import config as config_mod
from ..provenance import git_commit, utc_now
from .data import build_loaders, skipped_files
from .linear_eval import linear_eval, topk_accuracy
from .logger import Logger, plot_curves
from .pretrain import pretrain
from .precision import dtype_name, resolve as resolve_precision
from .runtime import barrier, seed_all, setup, teardown


def default_out(cfg: dict) -> str:
    name = Path(cfg["config"]).stem
    return str(Path("runs") / f"{name}-{cfg['loss']}-{datetime.now():%Y%m%d-%H%M%S}")


def run(cfg: dict, *, on_step=None) -> dict:
    """Pretrain then linear-evaluate as ``cfg`` says. Returns the summary dict (``linear_top1``, ...)."""
    t0 = time.perf_counter()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    rt = setup(cfg["device"])
    try:
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
        cfg = {**cfg, "loss_dtype": dtype_name(resolve_precision(cfg, rt.device)[1])}
        out = Path(cfg["out"])
        if rt.is_main:
            out.mkdir(parents=True, exist_ok=True)
            config_mod.save(cfg, out)
        barrier()
        seed_all(cfg["seed"] + rt.rank)
        logger = Logger(out, rank=rt.rank, tensorboard=cfg["tensorboard"])
        loaders = build_loaders(cfg, rank=rt.rank, world=rt.world, device=rt.device)
        logger.info(f"out {out} | device {rt.device} x{rt.world} | data {cfg['data']} ({loaders.backend}, "
                    f"{len(loaders.train)} steps/epoch) | {cfg['arch']} width {cfg['width']} | loss {cfg['loss']}")
        res = pretrain(cfg, rt, loaders, out, logger, on_step=on_step)
        summary = {"status": res["status"], "out": str(out), "data_backend": loaders.backend,
                   "device": str(rt.device), "world": rt.world, "loss_dtype": dtype_name(res["loss_dtype"]),
                   "steps": res["step"], "epochs": res["epoch"],
                   "best_knn_top1": res["best_knn"] if res["best_knn"] >= 0 else None}
        model = res["model"]
        if res["status"] == "done" and cfg["loss"] == "ce":
            model.eval()
            with torch.no_grad():
                logits, labels = zip(*((model(x).float(), y) for x, y in loaders.val))
            summary["ce_top1"], summary["ce_top5"] = (round(a, 3) for a in topk_accuracy(torch.cat(logits), torch.cat(labels)))
        if res["status"] == "done" and cfg["linear_epochs"]:
            logger.info(f"linear evaluation: {cfg['linear_epochs']} epochs on frozen features")
            summary.update(linear_eval(model.encoder, loaders.train_eval, loaders.val,
                                       num_classes=loaders.num_classes, epochs=cfg["linear_epochs"],
                                       lr=cfg["linear_lr"], batch_size=cfg["linear_batch_size"],
                                       holdout=cfg["linear_holdout"], seed=cfg["seed"], amp=res["amp"],
                                       logger=logger, head_path=out / "linear_head.pt" if rt.is_main else None))
        if cfg["skip_corrupt"]:  # all ranks: the list is gathered
            summary["skipped_files"] = skipped_files(loaders, rt.distributed)
        summary["wall_s"] = round(time.perf_counter() - t0, 1)
        summary.update(commit=git_commit(), date=utc_now(), torch=torch.__version__)  # where the result came from
        if rt.is_main:
            logger.metrics("summary", res["step"], **{k: v for k, v in summary.items() if k != "status"})
            logger.close()
            try:
                plot_curves(out / "metrics.jsonl", out / "curves.png")
                summary["plot"] = str(out / "curves.png")
            except Exception as e:  # a plotting failure must not lose a finished run's result
                print(f"warning: plotting failed: {e}")
        barrier()
        return summary
    finally:
        teardown()
