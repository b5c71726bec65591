"""SupCon pretraining, then linear evaluation.

    python tools/train.py                                   # the digits demo: CPU or GPU, minutes
    python tools/train.py --config cifar --data /data/cifar --out runs/c10
    torchrun --nproc_per_node=8 tools/train.py --config imagenet_resnet200 --data /data/imagenet
    python tools/train.py --resume auto --out runs/c10        # continue a stopped run exactly
    python tools/train.py --loss ce                          # the cross-entropy baseline

Options: defaults < YAML preset (--config) < command line; `--help` lists them. The resolved config
is saved as <out>/config.yaml. The last stdout line is a JSON summary (linear_top1, linear_top5, out).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from supcon_fast.engine import config  # noqa: E402
from supcon_fast.engine.pretrain import NonFiniteLossError  # noqa: E402
from supcon_fast.engine.run import run  # noqa: E402


def main(argv=None) -> int:
    try:
        cfg = config.resolve(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = run(cfg)
    except (ValueError, FileNotFoundError) as e:       # bad data / config found while building the run
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
