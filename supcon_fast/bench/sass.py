"""Static evidence on the CUDA kernels: their compiled code for sm_90 (registers, spills, shared
memory, occupancy, the instruction mix of the column-tile loop) and a roofline estimate of an H200
run, for the kernels before the FlashAttention-2 rewrite (``--old-rev``) and for this checkout.
``tools/sass_report.py`` is the command line.

Each tree's ``csrc/cuda/supcon_cuda.cu`` is compiled as ``setup.py`` compiles it (its nvcc flags,
torch's include paths and defines), for sm_90 only, to a cubin with ``ptxas -v``; ``nvdisasm -gi``
(what ``cuobjdump -sass`` runs, plus the line records that ``-lineinfo`` leaves) disassembles it.
A small host program built against the same tree prints each kernel's shared memory and tile shape
and the host's launch plan (``sass_build.py``). The column-tile loop (the loop over ``ct``) is walked once per warp
along the common path of an interior tile: the path rules below, stated and recorded per decision.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter

from ..provenance import ROOT, git_commit, machine_info, utc_now
from . import sass_model
from .sass_build import compile_tree, extract_rev, find_tool, identify, run_probe
from .sass_cfg import Function, LoopSpec, choose_side, walk_iteration

OLD_REV = "2237d97"  # the last commit before the FlashAttention-2 style kernels
ARCH = "sm_90"
DEFINITIONS = {
    "instr_per_s_element": "SASS instructions one lane issues per S element it owns in the column-tile loop: "
                           "(warp instructions per loop iteration, averaged over the block's warps) x 32 / "
                           "(S elements per block per iteration / warps per block); the same as warp "
                           "instructions per iteration over the S elements per lane. The issue's targets "
                           "(<= 12 forward, <= 25 backward) are read in this unit: as issue slots per "
                           "element, 12 would be about 49 ms of issue for the forward alone at N = 65,536 "
                           "on an H200, against its 12 ms target for forward + backward.",
    "warp_instr_per_s_element": "warp instructions (issue slots) per S element: instr_per_s_element / 32",
    "path": "one iteration of the column-tile loop of an interior tile, variant 'out', 16-byte aligned z "
            "with D % 8 == 0, D = the kernel's tile width (one D chunk); inner loops count their trips "
            "per thread (the warp's largest) times one pass of their compiled (unrolled) body over the "
            "source iterations it covers, so their remainder code is left out",
    "instructions": "every issued SASS instruction counts once per warp, predicated-off ones included",
    "bytes": "per warp instruction: access width x 32 lanes (all lanes active); shared: LDS, STS, LDSM, "
             "the shared side of LDGSTS, and generic LD / ST (in these loops they address the shared "
             "tiles: the WMMA fragment loads); global: LDG, LDGSTS, STG",
}

# Conditional branches on the path of an interior tile, by the source line they compile from. The
# side is chosen by what the condition means for an interior tile: 'long' / 'short' is the side that
# runs more / fewer instructions before the two sides meet, 'has:REGEX' the side with such an opcode.
BRANCH_RULES = [
    ("interior tile (full, without the diagonal): the kernels' fast path",
     re.compile(r"if \(interior\)"), "short"),
    ("a full tile (every row valid, D = the tile width) is copied without bounds checks",
     re.compile(r"if \(vec && full\)"), "short"),
    ("positive pairs (equal labels) are rare: about 1 column in `classes`",
     re.compile(r"if \(same[\[)]|if \(\w*lab\[c\] == \w+\)"), "short"),
    ("variant 'out' (the loss's default) does less work on its side",
     re.compile(r"variant_in \?|if \(!?(p\.)?variant_in\b"), "short"),
    ("the anchor tile stays in shared memory (one D chunk)", re.compile(r"zr_chunk != kc"), "short"),
    ("16-byte vector copies (D % 8 == 0, aligned z)", re.compile(r"if \(vec\)"),
     r"has:LDGSTS(\.\w+)*|LDG(\.\w+)*\.128(\.\w+)*"),
]
DEFAULT_RULE = "interior tile: bounds, diagonal and non-zero guards let the work run"


def _by_thread(bound: int, stride: int, warp: int) -> float:
    """Trips of `for (i = threadIdx.x; i < bound; i += stride)` for the warp's first (busiest) lane."""
    return max(0, math.ceil((bound - 32 * warp) / stride))


# Loops inside the column-tile loop, by their `for` line: trips per thread at the kernel's tile
# shape c (BM, BN, NT, TD = D tile, D = TD: one chunk), and the marker that finds their unroll.
LOOP_RULES = [
    ("column tile copy, 16-byte cp.async", re.compile(r"idx < ROWS \* CPR"),
     lambda c, w: _by_thread(c["BN"] * c["TD"] // 8, c["NT"], w), "LDGSTS", lambda c: 1),
    ("column tile copy, 2-byte elements", re.compile(r"idx < ROWS \* C::DP"),
     lambda c, w: _by_thread(c["BN"] * c["TD"], c["NT"], w), "STS", lambda c: 1),
    ("column tile copy, 16-byte vectors", re.compile(r"idx < ROWS \* VPR"),
     lambda c, w: _by_thread(c["BN"] * c["TD"] // 8, c["NT"], w), "STS", lambda c: 1),
    ("column tile copy, elements", re.compile(r"idx < ROWS \* E::BK"),
     lambda c, w: _by_thread(c["BN"] * c["TD"], c["NT"], w), "STS", lambda c: 1),
    # the loads mark these two: their stores come in predicated pairs where the source has a ternary
    ("column labels", re.compile(r"for \(int c = tid; c < BN; c \+= (C::)?NT\)\s*(cs_)?lab\["),
     lambda c, w: _by_thread(c["BN"], c["NT"], w), "LDG", lambda c: 1),
    ("column labels and statistics", re.compile(r"for \(int c = tid; c < BN; c \+= (C::)?NT\)\s*\{"),
     lambda c, w: _by_thread(c["BN"], c["NT"], w), "LDG", lambda c: 4),
    ("D chunks", re.compile(r"for \(int (kc|kk) = 0; \1 < nk"), lambda c, w: math.ceil(c["D"] / c["TD"]), None, None),
    ("k steps of the WMMA S product", re.compile(r"for \(int k = 0; k < kp; k \+= 16\)"),
     lambda c, w: c["TD"] // 16, "HMMA", lambda c: 8),
    ("k steps of the FFMA S product", re.compile(r"for \(int k = 0; k < kp; \+\+k\)"),
     lambda c, w: c["TD"], "FFMA|DFMA", lambda c: 16),
    ("columns of the FFMA H product", re.compile(r"for \(int c = 0; c < BN; \+\+c\)"),
     lambda c, w: c["BN"], "FFMA|DFMA", lambda c: 4 * c["TD"] // 16),
    ("epilogue columns of an anchor row", re.compile(r"for \(int c = my_h; c < cols_valid; c \+= TPR\)"),
     lambda c, w: c["BN"] // (c["NT"] // c["BM"]), "LDS", lambda c: 2),
    ("epilogue elements of the H tile", re.compile(r"for \(int e = tid; e < BM \* BN; e \+= NT\)"),
     lambda c, w: _by_thread(c["BM"] * c["BN"], c["NT"], w), "STS", lambda c: 1),
]
COLUMN_TILE_LOOP = re.compile(r"for \(int64_t ct = ")


class Sources:
    """Source lines by (file, line), read once."""

    def __init__(self):
        self._files: dict[str, list[str]] = {}

    def text(self, loc: tuple) -> str:
        if not loc:
            return ""
        path, line = loc[0]
        if path not in self._files:
            try:
                with open(path) as f:
                    self._files[path] = f.read().splitlines()
            except OSError:
                self._files[path] = []
        lines = self._files[path]
        return lines[line - 1].split("//")[0].strip() if 0 < line <= len(lines) else ""  # code, not comments


class Policy:
    """The interior-tile path of one kernel: BRANCH_RULES and LOOP_RULES at its tile shape."""

    def __init__(self, shape: dict, sources: Sources):
        self.shape, self.sources = shape, sources

    def branch(self, fn: Function, k: int) -> tuple[bool, str]:
        text = self.sources.text(fn.instrs[k].loc)
        for why, pat, choose in BRANCH_RULES:
            if pat.search(text):
                taken = choose_side(fn, k, choose)
                if taken is not None:
                    return taken, why
        taken = choose_side(fn, k, "long")
        return bool(taken), DEFAULT_RULE if taken is not None else DEFAULT_RULE + " (sides alike: fall through)"

    def loop_spec(self, ins, warp: int) -> LoopSpec | None:
        text = self.sources.text(ins.loc)
        for name, pat, trips, marker, per_iter in LOOP_RULES:
            if pat.search(text):
                return LoopSpec(name, float(trips(self.shape, warp)), marker or "",
                                float(per_iter(self.shape)) if per_iter else 0.0)
        return None


# ---------------------------------------------------------------------------------------------
# The column-tile loop of one kernel
# ---------------------------------------------------------------------------------------------
MIX = ("HMMA", "LDSM", "LDS", "STS", "LDG", "LDGSTS", "LD", "ST", "MOVM", "MUFU", "FFMA", "FMUL", "FADD", "FMNMX",
       "FSEL", "FSETP", "SEL", "IMAD", "IADD3", "LEA", "LOP3", "SHF", "ISETP", "BRA", "BSSY", "BSYNC", "BAR", "SHFL")


def access(name: str) -> tuple[str, int] | None:
    """('shared' | 'global' | 'both', bytes per warp instruction) of a memory instruction's full name."""
    parts = name.split(".")
    op, mods = parts[0], set(parts[1:])
    if op == "LDSM":  # .4 / .2 / none: four / two / one 8x8 matrices of 16-bit values, 128 B each
        return "shared", 128 * (int(parts[-1]) if parts[-1] in ("2", "4") else 1)
    width = 16 if "128" in mods else 8 if "64" in mods else 1 if mods & {"U8", "S8"} else \
        2 if mods & {"U16", "S16"} else 4
    space = {"LDS": "shared", "STS": "shared", "LD": "shared", "ST": "shared", "LDG": "global", "STG": "global",
             "LDGSTS": "both"}.get(op)
    return (space, width * 32) if space else None


def column_tile_loop(fn: Function, sources: Sources):
    loops = [lp for lp in fn.loops if COLUMN_TILE_LOOP.search(sources.text(fn.instrs[fn.index[lp.tail]].loc))]
    return max(loops, key=lambda lp: lp.tail - lp.head) if loops else None, len(loops)


def analyze_loop(fn: Function, shape: dict, sources: Sources) -> dict | None:
    """The column-tile loop walked once per warp; counts are the mean over the block's warps."""
    loop, copies = column_tile_loop(fn, sources)
    if loop is None:
        return None
    nw = shape["NT"] // 32
    policy = Policy(dict(shape, D=shape["TD"]), sources)
    walks = [walk_iteration(fn, loop, policy, w) for w in range(nw)]
    counts, names = Counter(), Counter()
    for wk in walks:
        counts.update({k: v / nw for k, v in wk.counts.items()})
        names.update({k: v / nw for k, v in wk.names.items()})
    per_warp = sum(counts.values())
    elements = shape["BM"] * shape["BN"] / nw
    nbytes = Counter()
    for name, v in names.items():
        acc = access(name)
        if acc:
            for space in (("shared", "global") if acc[0] == "both" else (acc[0],)):
                nbytes[space] += v * acc[1]
    mix = {k: round(counts.get(k, 0.0), 3) for k in MIX}
    mix["other"] = round(per_warp - sum(counts.get(k, 0.0) for k in MIX), 3)
    seen, decisions, rules = set(), [], Counter()
    for d in walks[0].decisions:
        key = (d["addr"], d["taken"], d["why"])
        if key not in seen:
            seen.add(key)
            decisions.append({"addr": hex(d["addr"]), "taken": d["taken"], "why": d["why"]})
            rules[(d["why"], {True: "taken", False: "fall_through", None: "loop"}[d["taken"]])] += 1
    flags = {f for wk in walks for f in wk.flags} | ({f"{copies} compiled copies of the loop"} if copies > 1 else set())
    where = fn.instrs[fn.index[loop.tail]].loc[:1]
    return {
        "loop": {"head": hex(loop.head), "tail": hex(loop.tail),
                 "source": f"{os.path.basename(where[0][0])}:{where[0][1]}" if where else None},
        "warp_instructions_per_iteration": round(per_warp, 2),
        "s_elements_per_warp": elements,
        "instr_per_s_element": round(per_warp * 32 / elements, 3),
        "warp_instr_per_s_element": round(per_warp / elements, 4),
        "mix": mix,
        "opcodes": {k: round(v, 3) for k, v in counts.most_common()},
        "per_tile": {"instructions": per_warp * nw, "hmma": counts["HMMA"] * nw, "mufu": counts["MUFU"] * nw,
                     "smem_bytes": nbytes["shared"] * nw, "global_bytes": nbytes["global"] * nw},
        "operand_loads": {"ldsm": counts["LDSM"], "generic_ld": counts["LD"], "lds": counts["LDS"],
                          "movm": counts["MOVM"]},
        "path": {"rules": [{"why": why, "as": side, "branches": n} for (why, side), n in rules.items()],
                 "flags": sorted(flags), "decisions": decisions},
    }


def analyze_tree(root: str, work: str, *, n: int, dim: int, sms: int) -> tuple[list[dict], dict]:
    """Every fp16 / bf16 / fp32 forward and backward kernel of one tree: resources and its loop."""
    built = compile_tree(root, work)
    kernels = {m: k for m in built["sass"] if (k := identify(m)) and k["dtype"] != "fp64"}
    shapes = run_probe(root, work, kernels, n=n, m=n, offset=0, dim=dim, sms=sms)
    sources = Sources()
    records = []
    for mangled, k in sorted(kernels.items(), key=lambda kv: (kv[1]["kind"], kv[1]["engine"], kv[1]["kernel"])):
        res, shape = built["ptxas"].get(mangled, {}), shapes[mangled]
        bps, limit = sass_model.blocks_per_sm(res.get("registers", 0), shape["NT"],
                                               shape["smem_bytes"] + res.get("static_smem_bytes", 0))
        rec = {"kernel": k["kernel"], "mangled": mangled, "kind": k["kind"], "engine": k["engine"],
               "dtype": k["dtype"], "tile": {x: shape[x] for x in ("BM", "BN", "NT")} | {"D": shape["TD"]},
               "registers": res.get("registers"),
               "spill_bytes": res.get("spill_store_bytes", 0) + res.get("spill_load_bytes", 0),
               "stack_bytes": res.get("stack_bytes"), "static_smem_bytes": res.get("static_smem_bytes"),
               "smem_bytes": shape["smem_bytes"], "blocks_per_sm": bps, "occupancy_limit": limit}
        rec.update(analyze_loop(Function(mangled, built["sass"][mangled]), shape, sources) or {"loop": None})
        records.append(rec)
    plans = {m: s["plan"] for m, s in shapes.items()}
    return records, {"command": " ".join(built["command"]), "plans": plans}


# ---------------------------------------------------------------------------------------------
# The model's kernels, the report
# ---------------------------------------------------------------------------------------------
def select(records: list[dict], kind: str, dtype: str, dim: int, optin: int) -> dict:
    """The kernel the host launches for (kind, dtype, D) with `optin` bytes of shared memory per block,
    by with_fwd_config / with_bwd_config's rule (supcon_cuda.cu): the mma.sync kernel of the smallest
    padded D that fits, else the WMMA tile engine (its compact D chunk where the default does not fit)."""
    mine = [r for r in records if r["kind"] == kind and r["dtype"] == dtype]
    for r in sorted((r for r in mine if r["engine"] == "mma"), key=lambda r: r["tile"]["D"]):
        if dim <= r["tile"]["D"] and r["smem_bytes"] <= optin:
            return r
    tiles = sorted((r for r in mine if r["engine"] == "wmma"), key=lambda r: -r["tile"]["D"])
    return next((r for r in tiles if r["smem_bytes"] <= optin), tiles[-1])


def plan_check(kind: str, n: int, dim: int, tiles: list[int]) -> str:
    """Whether the probe's plan is the one the loaded extension's cuda_plan op lists (the schedule
    model's source) for this checkout."""
    try:
        import torch
        from ..schedule_model import plan_blocks
        op = plan_blocks(kind, n, n, 0, dim=dim, dtype=torch.bfloat16, arch=ARCH)[:, 1].tolist()
    except Exception as e:  # no extension: the probe's plan stands alone
        return f"not checked ({type(e).__name__})"
    if op == tiles:
        return "matches the cuda_plan op"
    return "differs from the cuda_plan op (an extension built from other sources?)"


def model_rev(records: list[dict], plans: dict, *, label: str, rev: str, n: int, dim: int, optin: int) -> dict:
    """Forward and backward time of one revision's bf16 kernels at (n, dim) on the H200."""
    out = {"rev": rev}
    for kind in ("fwd", "bwd"):
        r = select(records, kind, "bf16", dim, optin)
        t = sass_model.kernel_time(r["per_tile"], plans[r["mangled"]], r["blocks_per_sm"])
        t.update(kernel=r["kernel"], registers=r["registers"], blocks_per_sm=r["blocks_per_sm"],
                 instr_per_s_element=r["instr_per_s_element"], operand_loads=r["operand_loads"],
                 spill_bytes=r["spill_bytes"])
        if label == "new":
            t["plan"] = plan_check(kind, n, dim, plans[r["mangled"]])
        out[kind] = t
    out["total_ms"] = out["fwd"]["model_ms"] + out["bwd"]["model_ms"]
    return out


def report(*, old_rev: str = OLD_REV, n: int = 65536, dim: int = 128, workdir: str | None = None) -> dict:
    """Both revisions compiled, disassembled, walked and modelled; the results JSON as a dict."""
    import torch
    from ..testing import gpu_archs
    arch = gpu_archs()[ARCH]
    with tempfile.TemporaryDirectory() as tmp:
        work = workdir or tmp
        old_root = os.path.join(work, "old_src")
        trees = {"old": (old_root, old_rev, extract_rev(old_rev, old_root)),
                 "new": (ROOT, "working tree", git_commit())}
        kernels, model, builds = [], {}, {}
        for label, (root, rev, commit) in trees.items():
            records, extra = analyze_tree(root, os.path.join(work, label), n=n, dim=dim, sms=arch["sms"])
            kernels += [dict(r, rev=label) for r in records]
            builds[label] = {"rev": rev, "commit": commit, "nvcc_command": extra["command"]}
            model[label] = model_rev(records, extra["plans"], label=label, rev=rev if label == "old" else commit[:7]
                                     + ("-dirty" if commit.endswith("-dirty") else ""), n=n, dim=dim,
                                     optin=arch["smem_optin"])
            cmd = extra["command"].replace(old_root, "<old tree>").replace(ROOT, "<checkout>")
            builds[label]["nvcc_command"] = cmd
    modelled = {(label, model[label][kind]["kernel"]) for label in model for kind in ("fwd", "bwd")}
    for k in kernels:  # every decision only for the modelled kernels; the others keep the per-rule summary
        if (k["rev"], k["kernel"]) not in modelled and k.get("path"):
            k["path"].pop("decisions")
    return {
        "what": "compiled code (sm_90 SASS) of the CUDA kernels and a roofline estimate on an H200, "
                "old (before the FlashAttention-2 rewrite) vs new; an estimate, not a measurement",
        "definitions": DEFINITIONS,
        "path_rules": {"branches": [why for why, _, _ in BRANCH_RULES] + [DEFAULT_RULE],
                       "loops": [name for name, *_ in LOOP_RULES]},
        "config": {"arch": ARCH, "n": n, "m": n, "dim": dim, "dtype": "bf16", "variant": "out",
                   "smem_optin": arch["smem_optin"]},
        "device": sass_model.H200, "builds": builds, "toolkit": toolkit_versions(),
        "kernels": kernels, "model": model, "targets": sass_model.targets(model["new"]),
        "torch": torch.__version__, "commit": git_commit(), "date": utc_now(), "machine": machine_info("cpu"),
    }


def toolkit_versions() -> dict:
    def first_line(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()
            return out[-1] if out else None
        except OSError:
            return None
    return {"nvcc": first_line([find_tool("nvcc") or "nvcc", "--version"]),
            "nvdisasm": first_line([find_tool("nvdisasm") or "nvdisasm", "--version"])}


def summary(result: dict) -> str:
    """Old vs new, one line per kernel of the model, the totals and the targets."""
    rows = []
    for label in ("old", "new"):
        m = result["model"][label]
        for kind in ("fwd", "bwd"):
            k = m[kind]
            rows.append(f"{label} {kind}: {k['kernel']}: {k['registers']} regs, {k['blocks_per_sm']} blocks/SM, "
                        f"{k['instr_per_s_element']:.1f} instr/S element, {k['model_ms']:.2f} ms "
                        f"(bound: {k['bound']}, tail {k['tail']:.3f})")
        rows.append(f"{label} total: {m['total_ms']:.2f} ms (model)")
    rows += [f"target: {t['target']}: {t['value']} -> {'pass' if t['pass'] else 'FAIL'}" for t in result["targets"]]
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-rev", default=OLD_REV, help="commit of the old kernels (default: %(default)s)")
    p.add_argument("--n", type=int, default=65536, help="rows of z for the model (M = N)")
    p.add_argument("--dim", type=int, default=128, help="D for the model")
    p.add_argument("--workdir", default=None, help="keep the cubins, disassembly and probes here")
    p.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "sass_sm90.json"))
    a = p.parse_args(argv)
    result = report(old_rev=a.old_rev, n=a.n, dim=a.dim, workdir=a.workdir)
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
    sass_model.plot(result, os.path.splitext(a.json)[0] + ".png")
    print(summary(result))
    print(f"wrote {a.json}", file=sys.stderr)
