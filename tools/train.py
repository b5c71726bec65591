"""SupCon pretraining, then linear evaluation: `supcon_fast.train` run from a checkout.

    python tools/train.py                                   # the digits demo: CPU or GPU, minutes
    python tools/train.py --config cifar --data /data/cifar --out runs/c10
    torchrun --nproc_per_node=8 tools/train.py --config imagenet_resnet200 --data /data/imagenet
    python tools/train.py --resume auto --out runs/c10        # continue a stopped run exactly
    python tools/train.py --loss ce                          # the cross-entropy baseline

Options: defaults < YAML preset (--config) < command line; `--help` lists them. The resolved config
is saved as <out>/config.yaml. The last stdout line is a JSON summary (linear_top1, linear_top5, out).
Installed, the same command is `python -m supcon_fast.train` or `supcon-train`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from supcon_fast.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
