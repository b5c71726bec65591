"""The training entry point: SupCon (or SimCLR, or cross-entropy) pretraining, then linear evaluation.

    python -m supcon_fast.train                              # the digits demo: CPU or GPU, minutes
    supcon-train --config cifar --data /data/cifar --out runs/c10
    torchrun --nproc_per_node=8 -m supcon_fast.train --config imagenet_resnet200 --data /data/imagenet
    python -m supcon_fast.train --resume auto --out runs/c10  # continue a stopped run exactly
    python -m supcon_fast.train --loss ce                    # the cross-entropy baseline
    python -m supcon_fast.train --queue 4096                 # also contrast against the last 4096 embeddings

Options: defaults < YAML preset (--config) < command line; `--help` lists them. The resolved config
is saved as <out>/config.yaml. The last stdout line is a JSON summary (linear_top1, linear_top5, out).
``tools/train.py`` is the same command from a checkout; ``train(argv)`` is it as a function.
"""
from __future__ import annotations

import json
import os
import sys

from .engine import config
from .engine.pretrain import NonFiniteLossError
from .engine.run import run


def train(argv: list[str] | None = None) -> dict:
    """One run from command-line options (``None``: sys.argv); returns its summary. Bad options or
    data raise ValueError / FileNotFoundError naming them; a diverged run, NonFiniteLossError."""
    return run(config.resolve(argv))


def main(argv: list[str] | None = None) -> int:
    """The command: 0 done (or stopped by a signal, checkpoint written), 1 diverged, 2 bad input."""
    try:
        summary = train(argv)
    except (ValueError, FileNotFoundError) as e:       # bad options, data or config
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
