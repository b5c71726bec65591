"""How evenly the CUDA kernels' blocks share a GPU: a schedule model over the host's own plan.

The blocks of a launch come from the same planning code the host launches with (``csrc/cuda/
supcon_plan.cuh``, through the ``cuda_plan`` op of the CPU build). The model hands them to the SMs
in launch order, as the block scheduler does, each to the first free slot (``sms x blocks_per_sm``
slots), and takes a block's time as its number of column tiles: every tile is the same S tile GEMM
plus epilogue (and H GEMM in the backward). The tail is the makespan over the ideal (all tiles
spread evenly over the slots): 1.0 is perfect balance. The baseline is the same work as one block
per row block in row order, as the backward was launched before its heavy row blocks were cut.

It does not model memory bandwidth, L2 reuse or the finalize kernels; it is about the shape of the
grid, which is what decides how long the last SM runs after the others are done.
"""
from __future__ import annotations

import heapq

import torch

from . import ops
from .provenance import git_commit, machine_info, utc_now

SLOTS_PER_SM = 1  # one 8-warp block per SM (the backward's register budget: kBwdMinBlocks = 1)


def plan_blocks(kernel: str, n: int, m: int, offset: int, *, dim: int = 128, dtype=torch.bfloat16,
                arch: str = "sm_90") -> torch.Tensor:
    """[blocks, 3] int64 in launch order: (row block, column tiles, 1 if the row block holds an anchor)."""
    if not ops.available():
        raise RuntimeError(f"the schedule model needs the compiled extension: {ops.build_error()}")
    return torch.ops.supcon_fast.cuda_plan(kernel, n, m, offset, dim, dtype, arch)


def makespan(tiles: list[int], slots: int) -> int:
    """Blocks in launch order to the first free of ``slots``; returns when the last one finishes."""
    free = [0] * slots
    heapq.heapify(free)
    end = 0
    for t in tiles:
        start = heapq.heappop(free)
        end = max(end, start + t)
        heapq.heappush(free, start + t)
    return end


def row_order(blocks: torch.Tensor) -> list[int]:
    """The baseline: the same work, one block per row block (its parts' tiles summed), in row order."""
    per_row: dict[int, int] = {}
    for rb, tiles, _ in blocks.tolist():
        per_row[rb] = per_row.get(rb, 0) + tiles
    return [per_row[rb] for rb in sorted(per_row)]


def model_case(kernel: str, n: int, m: int, offset: int, *, arch: str = "sm_90", sms: int, dim: int = 128,
               dtype=torch.bfloat16, slots_per_sm: int = SLOTS_PER_SM) -> dict:
    blocks = plan_blocks(kernel, n, m, offset, dim=dim, dtype=dtype, arch=arch)
    tiles = blocks[:, 1].tolist()
    slots = sms * slots_per_sm
    ideal = sum(tiles) / slots
    base = row_order(blocks)
    return {"kernel": kernel, "n": n, "m": m, "offset": offset, "blocks": len(tiles), "tiles": sum(tiles),
            "max_block_tiles": max(tiles), "ideal": ideal, "makespan": makespan(tiles, slots),
            "tail": makespan(tiles, slots) / ideal, "baseline_blocks": len(base),
            "baseline_tail": makespan(base, slots) / ideal}


def model(n: int = 65536, fractions=(1, 8, 64), *, arch: str = "sm_90", dim: int = 128, dtype=torch.bfloat16,
          slots_per_sm: int = SLOTS_PER_SM) -> dict:
    """Every rank's anchor block (offset = rank * M, M = n / fraction) for the forward and backward;
    the summary keeps the worst rank per (kernel, M)."""
    from .testing import gpu_archs  # the arch table the emulation and the planning share
    archs = gpu_archs()
    if arch not in archs:
        raise ValueError(f"arch: {arch!r} is not one of {list(archs)}")
    sms = archs[arch]["sms"]
    cases = []
    for frac in fractions:
        m = n // frac
        for kernel in ("fwd", "bwd"):
            for rank in range(frac):
                cases.append(model_case(kernel, n, m, rank * m, arch=arch, sms=sms, dim=dim, dtype=dtype,
                                        slots_per_sm=slots_per_sm))
    summary = []
    for frac in fractions:
        for kernel in ("fwd", "bwd"):
            rows = [c for c in cases if c["kernel"] == kernel and c["m"] == n // frac]
            worst = max(rows, key=lambda c: c["tail"])
            summary.append({"kernel": kernel, "m": n // frac, "ranks": len(rows), "worst_tail": worst["tail"],
                            "worst_offset": worst["offset"], "worst_baseline_tail": max(c["baseline_tail"] for c in rows),
                            "blocks": worst["blocks"], "max_block_tiles": worst["max_block_tiles"]})
    return {"what": "schedule model of the CUDA kernels' grids (see supcon_fast/schedule_model.py)",
            "config": {"n": n, "fractions": list(fractions), "arch": arch, "sms": sms, "dim": dim,
                       "dtype": str(dtype).removeprefix("torch."), "slots_per_sm": slots_per_sm},
            "summary": summary, "cases": cases, "torch": torch.__version__, "commit": git_commit(),
            "date": utc_now(), "machine": machine_info("cpu")}


def plot(result: dict, path: str) -> None:
    """Worst-rank tail per (kernel, M): the plan against the row-order baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["summary"]
    labels = [f"{r['kernel']}\nM = N/{result['config']['n'] // r['m']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([i - 0.2 for i in x], [r["worst_baseline_tail"] for r in rows], 0.4,
           label="one block per row block, row order")
    ax.bar([i + 0.2 for i in x], [r["worst_tail"] for r in rows], 0.4, label="the plan (supcon_plan.cuh)")
    ax.axhline(1.1, color="k", ls="--", lw=1, label="1.1 x ideal")
    ax.set_yscale("log")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("makespan / ideal (worst rank)")
    cfg = result["config"]
    ax.set_title(f"Modelled tail, N = {cfg['n']}, {cfg['arch']} ({cfg['sms']} SMs x {cfg['slots_per_sm']}), {cfg['dtype']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
