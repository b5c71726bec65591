#!/usr/bin/env python
"""What the official loss options cost on the fused CPU op (supcon_fast/bench/loss_options.py).

    python tools/bench_loss_options.py --json benchmarks/results/loss_options_cpu_fp32.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from supcon_fast.bench.loss_options import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
