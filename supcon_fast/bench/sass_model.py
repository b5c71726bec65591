"""Occupancy and a roofline time model of the CUDA kernels on an H200, from their compiled code (the
instructions one column tile issues, ``supcon_fast.bench.sass``) and the host's launch plan. An
estimate: no GPU has run these kernels. Every figure below is a stated assumption.

Time of a kernel = max(tensor, issue, MUFU, shared memory, L2) x tail, where each term is the whole
launch's work of that kind over the GPU's rate for it, and the tail is the schedule model's makespan
over the ideal (``supcon_fast.schedule_model.makespan``) with ``SMs x blocks_per_sm`` slots. It is
a throughput bound: it assumes the resident warps keep the busiest unit busy (no latency, no bank
conflicts, no clock drop under load), so it errs on the fast side.
"""
from __future__ import annotations

import math

from ..schedule_model import makespan

# H200 SXM (GH100, sm_90). Sources: NVIDIA H200 / H100 datasheets and the Hopper tuning guide; the
# CUDA programming guide's throughput table for sm_90 (MUFU exp2: 16 / clk / SM; 4 schedulers each
# issuing one warp instruction per clock); shared memory 32 banks x 4 B per clock.
H200 = {
    "name": "H200 SXM",
    "sms": 132,
    "clock_ghz": 1.98,                   # max boost; sustained clocks under tensor load are lower
    "tensor_tflops_spec_dense_bf16": 989.4,
    # The bf16 matmul rate the design target is stated against (docs/design.md: 12 ms is 35 % of it
    # at 6 N^2 D FLOPs, i.e. about 790 TFLOP/s). mma.sync (HMMA) is not wgmma: on Hopper it is
    # reported well below this, so the tensor term is optimistic for these kernels.
    "tensor_tflops": 790.0,
    "mufu_per_clk_sm": 16,
    "issue_per_clk_sm": 4,               # warp instructions
    "smem_bytes_per_clk_sm": 128,
    "l2_tb_per_s": 10.0,                 # order of magnitude; microbenchmarks of H100 report 5.5-7
    "regs_per_sm": 65536,
    "reg_alloc_per_warp": 256,           # registers are allocated per warp in units of 256
    "smem_per_sm": 228 * 1024,
    "smem_per_block_max": 227 * 1024,
    "smem_reserved_per_block": 1024,     # the runtime's own shared memory per block on sm_80+
    "warps_per_sm": 64,
    "blocks_per_sm": 32,
}
FLOPS_PER_HMMA = 2 * 16 * 8 * 16  # HMMA.16816: m16 n8 k16, a multiply and an add each


def blocks_per_sm(registers: int, threads: int, smem_bytes: int, dev: dict = H200) -> tuple[int, str]:
    """Resident blocks per SM and what limits them (registers, shared memory, warps or blocks)."""
    warps = math.ceil(threads / 32)
    per_warp = math.ceil(max(registers, 1) * 32 / dev["reg_alloc_per_warp"]) * dev["reg_alloc_per_warp"]
    limits = {"registers": (dev["regs_per_sm"] // per_warp) // warps,
              "warps": dev["warps_per_sm"] // warps,
              "blocks": dev["blocks_per_sm"]}
    if smem_bytes > dev["smem_per_block_max"]:
        limits["shared memory"] = 0
    else:
        limits["shared memory"] = dev["smem_per_sm"] // (smem_bytes + dev["smem_reserved_per_block"])
    which = min(limits, key=lambda k: (limits[k], k != "registers"))
    return limits[which], which


def tail(block_tiles: list[int], slots: int) -> float:
    """Makespan over the ideal (all tiles spread evenly over the slots)."""
    return makespan(block_tiles, slots) / (sum(block_tiles) / slots)


def kernel_time(per_tile: dict, block_tiles: list[int], bps: int, dev: dict = H200) -> dict:
    """Modelled time of one launch. per_tile: one block's warp instructions, HMMA, MUFU (warp
    instructions), shared-memory and global bytes per column tile; block_tiles: the plan's column
    tiles per block in launch order."""
    tiles = sum(block_tiles)
    clk = dev["clock_ghz"] * 1e9 * dev["sms"]
    terms = {
        "tensor": per_tile["hmma"] * FLOPS_PER_HMMA * tiles / (dev["tensor_tflops"] * 1e12),
        "issue": per_tile["instructions"] * tiles / (dev["issue_per_clk_sm"] * clk),
        "mufu": per_tile["mufu"] * 32 * tiles / (dev["mufu_per_clk_sm"] * clk),
        "shared_memory": per_tile["smem_bytes"] * tiles / (dev["smem_bytes_per_clk_sm"] * clk),
        "l2": per_tile["global_bytes"] * tiles / (dev["l2_tb_per_s"] * 1e12),
    }
    bound = max(terms, key=terms.get)
    slots = dev["sms"] * max(bps, 1)
    t = tail(block_tiles, slots)
    return {"terms_ms": {k: v * 1e3 for k, v in terms.items()}, "bound": bound, "tail": t,
            "blocks": len(block_tiles), "block_tiles": tiles, "slots": slots,
            "flops": per_tile["hmma"] * FLOPS_PER_HMMA * tiles, "model_ms": terms[bound] * t * 1e3}


# The targets. instr_per_s_element is per lane (see supcon_fast.bench.sass.DEFINITIONS).
TARGETS = {"fwd_instr_per_s_element": 12.0, "bwd_instr_per_s_element": 25.0, "model_total_ms": 12.0}


def targets(new: dict) -> list[dict]:
    """Pass / fail of the new kernels against the issue's targets. new: {'fwd': kernel record,
    'bwd': kernel record, 'total_ms': float}."""
    out = []
    for kind in ("fwd", "bwd"):
        v = new[kind]["instr_per_s_element"]
        lim = TARGETS[f"{kind}_instr_per_s_element"]
        out.append({"target": f"{kind} inner loop <= {lim:g} SASS instructions per S element", "value": round(v, 2),
                    "pass": v <= lim})
    loads = [new[k]["operand_loads"] for k in ("fwd", "bwd")]
    out.append({"target": "bf16 operand loads through LDSM", "value": loads,
                "pass": all(x["ldsm"] > 0 and x["generic_ld"] == 0 and x["movm"] == 0 for x in loads)})
    spills = [new[k]["spill_bytes"] for k in ("fwd", "bwd")]
    out.append({"target": "no spills", "value": spills, "pass": all(s == 0 for s in spills)})
    out.append({"target": f"modelled H200 fwd + bwd <= {TARGETS['model_total_ms']:g} ms",
                "value": round(new["total_ms"], 2), "pass": new["total_ms"] <= TARGETS["model_total_ms"]})
    return out


def plot(result: dict, path: str) -> None:
    """Old vs new: instructions per S element (fwd, bwd) and modelled ms (fwd, bwd, total)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = result["model"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    x = [0, 1]
    for off, rev in ((-0.2, "old"), (0.2, "new")):
        a.bar([i + off for i in x], [m[rev][k]["instr_per_s_element"] for k in ("fwd", "bwd")], 0.4,
              label=f"{rev} ({m[rev]['rev']})")
        b.bar([i + off for i in range(3)], [m[rev]["fwd"]["model_ms"], m[rev]["bwd"]["model_ms"], m[rev]["total_ms"]],
              0.4, label=f"{rev} ({m[rev]['rev']})")
    a.plot([-0.45, 0.45], [TARGETS["fwd_instr_per_s_element"]] * 2, "k--", lw=1)
    a.plot([0.55, 1.45], [TARGETS["bwd_instr_per_s_element"]] * 2, "k--", lw=1, label="target")
    a.set_xticks(x, ["forward", "backward"])
    a.set_ylabel("SASS instructions per S element (per lane)")
    a.set_title("Inner loop, bf16, D = 128 (static count)")
    a.legend()
    b.axhline(TARGETS["model_total_ms"], color="k", ls="--", lw=1, label="target (total)")
    b.set_xticks(range(3), ["forward", "backward", "total"])
    b.set_ylabel("ms (model, not measured)")
    cfg = result["config"]
    b.set_title(f"Roofline estimate, {result['device']['name']}, N = {cfg['n']}, D = {cfg['dim']}")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
