"""Linear evaluation of a pretraining checkpoint, standalone.

    python tools/linear_eval.py runs/demo-supcon-.../last.pt
    python tools/linear_eval.py ckpt.pt --data /data/imagenet --linear-epochs 90 --linear-lr 0.1

The encoder (the checkpoint's ``model`` minus the head) is frozen in eval mode; a linear classifier is
fit on train minus a held-out split and reported on val. The data, size and model come from the config
stored in the checkpoint unless overridden. The last stdout line is a JSON object.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from supcon_fast.engine import checkpoint, config  # noqa: E402
from supcon_fast.engine.data import build_loaders, with_data  # noqa: E402
from supcon_fast.engine.linear_eval import linear_eval  # noqa: E402
from supcon_fast.engine.pretrain import build_pretrain_model  # noqa: E402
from supcon_fast.engine.precision import amp_dtype  # noqa: E402
from supcon_fast.engine.runtime import setup, teardown  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a .pt written by tools/train.py")
    for key in ("data", "dataset", "backend", "linear_epochs", "linear_lr", "linear_batch_size",
                "linear_holdout", "eval_batch_size", "device", "amp", "seed", "num_threads"):
        _, typ, help_, choices = config.OPTIONS[key]
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=typ, choices=choices, help=help_)
    args = vars(p.parse_args(argv))
    try:
        state = checkpoint.load(args.pop("checkpoint"))
        given = {k: v for k, v in args.items() if v is not None}
        cfg = config.validate({**with_data(state["config"], given.get("data")), **given})
        rt = setup(cfg["device"])
        loaders = build_loaders(cfg, rank=rt.rank, world=rt.world, device=rt.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        model = build_pretrain_model({**cfg, "sync_bn": False}, state.get("num_classes", loaders.num_classes), rt)
        model.load_state_dict(state["model"])
        res = linear_eval(model.encoder, loaders.train_eval, loaders.val, num_classes=loaders.num_classes,
                          epochs=cfg["linear_epochs"], lr=cfg["linear_lr"], batch_size=cfg["linear_batch_size"],
                          holdout=cfg["linear_holdout"], seed=cfg["seed"], amp=amp_dtype(cfg["amp"], rt.device))
    finally:
        teardown()
    if rt.is_main:
        print(json.dumps({**res, "checkpoint_step": state["step"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
