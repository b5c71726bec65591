"""Loss benchmark: forward+backward time and loss-attributable peak memory, one fresh process per case.

Each case (impl, device, dtype, n, dim) runs in its own subprocess so that its memory peak is its own:
on CPU the peak RSS above what the process held once its inputs existed (``ru_maxrss``), on CUDA
``max_memory_allocated`` above the allocated inputs. A case that runs out of memory or time is recorded
with its status, not dropped. ``tools/bench_loss.py`` is the command-line wrapper.

Impls: ``fused`` and ``reference`` (supcon_fast), ``reference_compiled`` (``torch.compile`` of the
reference), ``pml`` (pytorch-metric-learning's ``SupConLoss``, when installed).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from ..provenance import git_commit, machine_info, utc_now

IMPLS = ("fused", "reference", "reference_compiled", "pml")
DTYPES = {"fp64": "float64", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _make_loss_fn(impl: str, temperature: float):
    import torch
    from supcon_fast import supcon_loss, supcon_loss_reference
    if impl == "fused":
        return lambda f, y: supcon_loss(f, y, temperature=temperature, impl="fused")
    if impl == "reference":
        return lambda f, y: supcon_loss_reference(f, y, temperature=temperature)
    if impl == "reference_compiled":
        compiled = torch.compile(supcon_loss_reference, dynamic=False)
        return lambda f, y: compiled(f, y, temperature=temperature)
    if impl == "pml":
        from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss  # optional dependency
        crit = PMLSupConLoss(temperature=temperature)
        # PML takes embeddings [N, D] and labels [N]: the same view-major contrast set
        return lambda f, y: crit(f.transpose(0, 1).reshape(-1, f.shape[-1]), y.repeat(f.shape[1]))
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def run_case(case: dict) -> dict:
    """Runs one case in this process (call it in a fresh one). Returns the record without metadata."""
    import torch
    device, n, dim = case["device"], case["n"], case["dim"]
    dtype = getattr(torch, DTYPES[case["dtype"]])
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    fn = _make_loss_fn(case["impl"], case.get("temperature", 0.07))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def inputs(views):
        g = torch.Generator(device=device).manual_seed(0)
        f = torch.randn(views // 2, 2, dim, device=device, dtype=torch.float32, generator=g)
        f = f.div_(f.norm(dim=-1, keepdim=True)).to(dtype).requires_grad_(True)
        y = torch.randint(0, case.get("classes", 1000), (views // 2,), device=device, generator=g)
        return f, y

    def fwd_bwd(f, y):
        f.grad = None
        loss = fn(f, y)
        loss.backward()
        sync()
        return loss

    fwd_bwd(*inputs(64))  # load code paths (and compile) before the memory baseline
    f, y = inputs(n)
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if case.get("mem_limit_bytes"):  # an OOM becomes a MemoryError here, not the machine's problem
            with open("/proc/self/statm") as fh:
                vms = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            resource.setrlimit(resource.RLIMIT_AS, (vms + case["mem_limit_bytes"], resource.RLIM_INFINITY))
    t0 = time.perf_counter()
    loss = fwd_bwd(f, y)  # first full-size call: warm-up, and the memory peak
    first_s = time.perf_counter() - t0
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    repeats = max(1, min(case.get("repeats", 5), int(case.get("time_budget_s", 60) // max(first_s, 1e-6))))
    for _ in range(case.get("warmup", 1) - 1):
        fwd_bwd(f, y)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fwd_bwd(f, y)
            end.record()
            sync()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fwd_bwd(f, y)
            times.append((time.perf_counter() - t0) * 1e3)
    return {"status": "ok", "fwd_bwd_ms": statistics.median(times), "fwd_bwd_ms_min": min(times),
            "fwd_bwd_ms_max": max(times), "repeats": len(times), "peak_mem_bytes": int(peak),
            "loss": float(loss)}


def run_case_subprocess(case: dict, timeout_s: float) -> dict:
    """run_case in a fresh interpreter; a timeout, an OOM or a crash becomes the record's status."""
    cmd = [sys.executable, "-m", "supcon_fast.bench.loss", json.dumps(case)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": f"did not finish within {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return {**json.loads(lines[-1]), "wall_s": round(wall, 1)}
    err = (proc.stderr or "").strip().splitlines()
    tail = " | ".join(err[-3:])[-500:]
    oom = proc.returncode in (-9, 137) or any(k in (proc.stderr or "") for k in (
        "out of memory", "OutOfMemoryError", "can't allocate memory", "MemoryError", "std::bad_alloc"))
    return {"status": "oom" if oom else "error", "note": tail or f"exit code {proc.returncode}"}


def run_benchmark(ns, dims, dtypes, impls, device="cpu", repeats=5, timeout_s=600.0, mem_limit_gb=None,
                  threads=None, temperature=0.07, progress=print) -> list[dict]:
    """All cases, one subprocess each; returns the JSON records."""
    import torch
    records = []
    meta = {"torch": torch.__version__, "commit": git_commit(), "date": utc_now(), "machine": machine_info(device)}
    device_name = meta["machine"].get("gpu") if device == "cuda" else meta["machine"]["cpu"]
    # impls innermost: at each size they run back to back, so their ratio sees the same machine load
    for dim in dims:
        for dtype in dtypes:
            failed_at = {}  # impl -> the first size it ran out of memory or time at
            for n in sorted(ns):
                for impl in impls:
                    case = {"impl": impl, "device": device, "dtype": dtype, "n": n, "dim": dim,
                            "repeats": repeats, "threads": threads, "temperature": temperature,
                            "time_budget_s": timeout_s / 4,
                            "mem_limit_bytes": int(mem_limit_gb * 2**30) if mem_limit_gb else None}
                    if impl == "pml" and not _has_pml():
                        result = {"status": "skipped", "note": "pytorch-metric-learning is not installed"}
                    elif impl in failed_at:
                        prev = failed_at[impl]
                        result = {"status": prev["status"], "note": f"not run: already {prev['status']} at n={prev['n']}"}
                    else:
                        result = run_case_subprocess(case, timeout_s)
                        if result["status"] in ("oom", "timeout"):
                            failed_at[impl] = {"status": result["status"], "n": n}
                    rec = {"impl": impl, "device": device, "device_name": device_name, "dtype": dtype, "n": n,
                           "dim": dim, "fwd_bwd_ms": None, "peak_mem_bytes": None, **result, **meta}
                    records.append(rec)
                    progress(_describe(rec))
    return records


def _has_pml() -> bool:
    import importlib.util
    return importlib.util.find_spec("pytorch_metric_learning") is not None


def _describe(rec: dict) -> str:
    head = f"{rec['impl']:>18} {rec['device']} {rec['dtype']} n={rec['n']:>8} d={rec['dim']}"
    if rec["status"] != "ok":
        return f"{head}  {rec['status'].upper()}  {rec.get('note', '')}"
    return f"{head}  {rec['fwd_bwd_ms']:10.1f} ms  peak {rec['peak_mem_bytes'] / 2**20:9.1f} MiB"


def plot(records: list[dict], path: str) -> None:
    """Time and memory against N, log-log, one line per (impl, dtype); failed cases marked on the axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = sorted({(r["impl"], r["dtype"], r["dim"]) for r in records})
    for impl, dtype, dim in keys:
        rows = sorted((r for r in records if (r["impl"], r["dtype"], r["dim"]) == (impl, dtype, dim)), key=lambda r: r["n"])
        ok = [r for r in rows if r["status"] == "ok"]
        failed = [r for r in rows if r["status"] in ("oom", "timeout")]
        label = f"{impl} {dtype}" + (f" d={dim}" if len({k[2] for k in keys}) > 1 else "")
        for ax, key, scale in ((axes[0], "fwd_bwd_ms", 1.0), (axes[1], "peak_mem_bytes", 1 / 2**20)):
            if ok:
                line, = ax.plot([r["n"] for r in ok], [max(r[key] * scale, 1e-3) for r in ok], "o-", label=label)
                if failed:
                    ax.plot([r["n"] for r in failed], [max(r[key] * scale, 1e-3) for r in [ok[-1]] * len(failed)], "x",
                            color=line.get_color(), markersize=10)
    dev = records[0]["device_name"] if records else ""
    axes[0].set(xscale="log", yscale="log", xlabel="N (views in the contrast set)", ylabel="forward+backward (ms)",
                title=f"SupCon loss time ({dev})")
    axes[1].set(xscale="log", yscale="log", xlabel="N (views in the contrast set)", ylabel="loss-attributable peak (MiB)",
                title="memory  (x: out of memory / time at that N)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(records: list[dict]) -> str:
    """A Markdown table: one row per (dtype, dim, n), one time / memory column pair per impl."""
    impls = [i for i in IMPLS if any(r["impl"] == i for r in records)]
    head = "| dtype | N | " + " | ".join(f"{i} ms | {i} MiB" for i in impls) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(impls))]
    for dtype, dim, n in sorted({(r["dtype"], r["dim"], r["n"]) for r in records}):
        cells = []
        for impl in impls:
            r = next((r for r in records if (r["impl"], r["dtype"], r["dim"], r["n"]) == (impl, dtype, dim, n)), None)
            if r is None or r["status"] != "ok":
                cells += [r["status"] if r else "-", "-"]
            else:
                cells += [f"{r['fwd_bwd_ms']:.1f}", f"{r['peak_mem_bytes'] / 2**20:.1f}"]
        lines.append(f"| {dtype} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # one case, in a fresh process: python -m supcon_fast.bench.loss '{"impl": ...}'
    try:
        print(json.dumps(run_case(json.loads(sys.argv[1]))), flush=True)
    except (MemoryError, RuntimeError) as e:
        msg = str(e)
        if isinstance(e, MemoryError) or "memory" in msg.lower():
            print(f"MemoryError: out of memory: {msg[:300]}", file=sys.stderr)
            sys.exit(3)
        raise
