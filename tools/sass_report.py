#!/usr/bin/env python
"""The CUDA kernels' sm_90 SASS (registers, spills, shared memory, the column-tile loop's instruction
mix) and a roofline estimate on an H200, old kernels vs this checkout (supcon_fast/bench/sass.py).

    python tools/sass_report.py --json benchmarks/results/sass_sm90.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from supcon_fast.bench.sass import main  # noqa: E402

if __name__ == "__main__":
    main()
