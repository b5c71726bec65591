"""Loss benchmark: forward+backward time and loss-attributable peak memory, one fresh process per case.

Each case (impl, device, dtype, n, dim, queue) runs in its own subprocess so that its memory peak is its own:
on CPU the peak RSS above what the process held once its inputs existed (the kernel's high-water mark
``VmHWM``, reset to the current RSS at the baseline through ``/proc/self/clear_refs``), on CUDA
``max_memory_allocated`` above the allocated inputs. A case that runs out of memory or time is recorded
with its status, not dropped. ``tools/bench_loss.py`` is the command-line wrapper.

Impls: ``fused`` and ``reference`` (supcon_fast), ``reference_compiled`` (``torch.compile`` of the
reference), ``pml`` (pytorch-metric-learning's ``SupConLoss``, when installed).

Queue cases (``queue`` = K > 0): the n current views contrast against themselves plus a
``ContrastQueue`` of K random unit rows (``supcon_loss(..., queue=q)``, impl ``fused`` or ``reference``,
the materialized one). The queue is made before the memory baseline: its own storage is not counted.
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


QUEUE_IMPLS = ("fused", "reference")


def random_queue(size: int, dim: int, *, dtype, device, num_classes: int = 1000, seed: int = 1, chunk: int = 1024):
    """A full ``ContrastQueue`` of ``size`` random unit rows with random labels.

    Filled ``chunk`` rows at a time, so that no whole-queue temporary is made (on CPU the baseline
    also resets the peak; where it cannot, a temporary's peak would hide that much of the loss's).
    """
    import torch
    from supcon_fast import ContrastQueue
    q = ContrastQueue(size, dim, dtype=dtype, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    for start in range(0, size, chunk):
        n = min(chunk, size - start)
        rows = torch.randn(n, 1, dim, device=device, generator=g)
        q.push(rows.div_(rows.norm(dim=-1, keepdim=True)),
               torch.randint(0, num_classes, (n,), device=device, generator=g))
    return q


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


def _make_queue_loss_fn(impl: str, temperature: float):
    """``fn(features, labels, queue)`` through ``supcon_loss``: ``fused`` or the materialized ``reference``."""
    from supcon_fast import supcon_loss
    if impl not in QUEUE_IMPLS:
        raise ValueError(f"impl: the queue cases run {QUEUE_IMPLS}, got {impl!r}")
    return lambda f, y, q: supcon_loss(f, y, temperature=temperature, impl=impl, queue=q)


def _case_loss(case: dict, dtype):
    """(fn(features, labels, queue), make_queue(rows) -> ContrastQueue or None) of a case."""
    k, temperature = case.get("queue") or 0, case.get("temperature", 0.07)
    if k:
        fn = _make_queue_loss_fn(case["impl"], temperature)
    else:
        plain = _make_loss_fn(case["impl"], temperature)
        fn = lambda f, y, q: plain(f, y)  # noqa: E731

    def make_queue(rows):
        return random_queue(rows, case["dim"], dtype=dtype, device=case["device"],
                            num_classes=case.get("classes", 1000)) if k else None
    return fn, make_queue


def _rss_status(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (/proc/self/status)."""
    with open("/proc/self/status") as fh:
        line = next(ln for ln in fh if ln.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def _memory_baseline(case: dict) -> tuple[int, int | None]:
    """(baseline bytes, slack): CUDA allocated memory, or the CPU RSS now with its high-water mark reset.

    Not ``ru_maxrss``: a child process inherits its parent's peak RSS there (the kernel carries it over
    exec), which would hide any loss peak below the parent's size. ``slack``: how far the CPU peak still
    lies above the RSS now (0 when the reset worked); a loss peak below it would not show.
    """
    import torch
    if case["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated(), None
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")                  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
    except OSError:
        pass                               # then the slack says how much may be hidden
    base = _rss_status("VmRSS")
    if case.get("mem_limit_bytes"):  # an OOM becomes a MemoryError here, not the machine's problem
        with open("/proc/self/statm") as fh:
            vms = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (vms + case["mem_limit_bytes"], resource.RLIM_INFINITY))
    return base, max(0, _rss_status("VmHWM") - base)


def _peak_above(case: dict, base: int) -> int:
    import torch
    if case["device"] == "cuda":
        return torch.cuda.max_memory_allocated() - base
    return max(0, _rss_status("VmHWM") - base)


def run_case(case: dict) -> dict:
    """Runs one case in this process (call it in a fresh one). Returns the record without metadata."""
    import torch
    device, n, dim = case["device"], case["n"], case["dim"]
    dtype = getattr(torch, DTYPES[case["dtype"]])
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    fn, make_queue = _case_loss(case, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def inputs(views):
        g = torch.Generator(device=device).manual_seed(0)
        f = torch.randn(views // 2, 2, dim, device=device, dtype=torch.float32, generator=g)
        f = f.div_(f.norm(dim=-1, keepdim=True)).to(dtype).requires_grad_(True)
        y = torch.randint(0, case.get("classes", 1000), (views // 2,), device=device, generator=g)
        return f, y

    def fwd_bwd(f, y, q):
        f.grad = None
        loss = fn(f, y, q)
        loss.backward()
        sync()
        return loss

    fwd_bwd(*inputs(64), make_queue(64))  # load code paths (and compile) before the memory baseline
    f, y = inputs(n)
    q = make_queue(case.get("queue") or 0)  # before the baseline: the queue's storage is not the loss's memory
    sync()
    base, slack = _memory_baseline(case)
    t0 = time.perf_counter()
    loss = fwd_bwd(f, y, q)  # first full-size call: warm-up, and the memory peak
    first_s = time.perf_counter() - t0
    peak = _peak_above(case, base)
    repeats = max(1, min(case.get("repeats", 5), int(case.get("time_budget_s", 60) // max(first_s, 1e-6))))
    for _ in range(case.get("warmup", 1) - 1):
        fwd_bwd(f, y, q)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fwd_bwd(f, y, q)
            end.record()
            sync()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fwd_bwd(f, y, q)
            times.append((time.perf_counter() - t0) * 1e3)
    return {"status": "ok", "fwd_bwd_ms": statistics.median(times), "fwd_bwd_ms_min": min(times),
            "fwd_bwd_ms_max": max(times), "repeats": len(times), "peak_mem_bytes": int(peak),
            "baseline_slack_bytes": slack, "loss": float(loss)}


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
                  threads=None, temperature=0.07, queues=None, progress=print, on_record=None) -> list[dict]:
    """All cases, one subprocess each; returns the JSON records. ``queues``: K values (queue rows) to
    contrast each n against (None: no queue); a record's ``queue`` is its K (0: none). ``on_record``:
    called with the records so far after each case (a caller killed mid-run keeps what it saved)."""
    import torch
    records = []
    meta = {"torch": torch.__version__, "commit": git_commit(), "date": utc_now(), "machine": machine_info(device)}
    device_name = meta["machine"].get("gpu") if device == "cuda" else meta["machine"]["cpu"]
    # impls innermost: at each size they run back to back, so their ratio sees the same machine load
    for dim in dims:
        for dtype in dtypes:
            failed_at = {}  # impl -> the first size it ran out of memory or time at
            for n in sorted(ns):
                for k in sorted(queues or [0]):
                    for impl in impls:
                        case = {"impl": impl, "device": device, "dtype": dtype, "n": n, "dim": dim, "queue": k,
                                "repeats": repeats, "threads": threads, "temperature": temperature,
                                "time_budget_s": timeout_s / 4,
                                "mem_limit_bytes": int(mem_limit_gb * 2**30) if mem_limit_gb else None}
                        result = _run_or_skip(case, failed_at, timeout_s)
                        rec = {"impl": impl, "device": device, "device_name": device_name, "dtype": dtype, "n": n,
                               "dim": dim, "queue": k, "threads": threads, "fwd_bwd_ms": None, "peak_mem_bytes": None,
                               **result, **meta}
                        records.append(rec)
                        progress(_describe(rec))
                        if on_record is not None:
                            on_record(records)
    return records


def _run_or_skip(case: dict, failed_at: dict, timeout_s: float) -> dict:
    """The case's result; skipped where the impl cannot run it or already failed at a smaller size."""
    impl, size = case["impl"], f"n={case['n']}" + (f" queue={case['queue']}" if case["queue"] else "")
    if impl == "pml" and not _has_pml():
        return {"status": "skipped", "note": "pytorch-metric-learning is not installed"}
    if case["queue"] and impl not in QUEUE_IMPLS:
        return {"status": "skipped", "note": f"{impl} takes no queue"}
    if impl in failed_at:
        prev = failed_at[impl]
        return {"status": prev["status"], "note": f"not run: already {prev['status']} at {prev['size']}"}
    result = run_case_subprocess(case, timeout_s)
    if result["status"] in ("oom", "timeout"):
        failed_at[impl] = {"status": result["status"], "size": size}
    return result


def _has_pml() -> bool:
    import importlib.util
    return importlib.util.find_spec("pytorch_metric_learning") is not None


def _describe(rec: dict) -> str:
    head = f"{rec['impl']:>18} {rec['device']} {rec['dtype']} n={rec['n']:>8} d={rec['dim']}"
    if rec.get("queue"):
        head += f" queue={rec['queue']:>7}"
    if rec["status"] != "ok":
        return f"{head}  {rec['status'].upper()}  {rec.get('note', '')}"
    return f"{head}  {rec['fwd_bwd_ms']:10.1f} ms  peak {rec['peak_mem_bytes'] / 2**20:9.1f} MiB"


def plot(records: list[dict], path: str) -> None:
    """Time and memory against N, log-log, one line per (impl, dtype); failed cases marked on the axis.
    With queue records: against K (queue rows), one line per (impl, dtype, M current views)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    queued = any(r.get("queue") for r in records)
    if queued:
        records = [r for r in records if r.get("queue")]
    x = "queue" if queued else "n"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = sorted({_series(r, queued) for r in records})
    for key in keys:
        rows = sorted((r for r in records if _series(r, queued) == key), key=lambda r: r[x])
        ok = [r for r in rows if r["status"] == "ok"]
        failed = [r for r in rows if r["status"] in ("oom", "timeout")]
        label = f"{key[0]} {key[1]}" + (f" d={key[2]}" if len({k[2] for k in keys}) > 1 else "")
        label += f" M={key[3]}" if queued else ""
        for ax, col, scale in ((axes[0], "fwd_bwd_ms", 1.0), (axes[1], "peak_mem_bytes", 1 / 2**20)):
            if ok:
                line, = ax.plot([r[x] for r in ok], [max(r[col] * scale, 1e-3) for r in ok], "o-", label=label)
                if failed:
                    ax.plot([r[x] for r in failed], [max(r[col] * scale, 1e-3) for r in [ok[-1]] * len(failed)], "x",
                            color=line.get_color(), markersize=10)
    dev = records[0]["device_name"] if records else ""
    xlabel = "K (queue rows; M current views)" if queued else "N (views in the contrast set)"
    axes[0].set(xscale="log", yscale="log", xlabel=xlabel, ylabel="forward+backward (ms)",
                title=f"SupCon loss time ({dev})")
    axes[1].set(xscale="log", yscale="log", xlabel=xlabel, ylabel="loss-attributable peak (MiB)",
                title="memory  (x: out of memory / time at that size)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _series(rec: dict, queued: bool) -> tuple:
    """A plot line: (impl, dtype, dim), and the current views M of queue cases."""
    return (rec["impl"], rec["dtype"], rec["dim"]) + ((rec["n"],) if queued else ())


def markdown_table(records: list[dict]) -> str:
    """A Markdown table: one row per (dtype, dim, n[, queue K]), one time / memory column pair per impl."""
    impls = [i for i in IMPLS if any(r["impl"] == i for r in records)]
    queued = any(r.get("queue") for r in records)
    head = "| dtype | N | " + ("K | " if queued else "") + " | ".join(f"{i} ms | {i} MiB" for i in impls) + " |"
    lines = [head, "|" + "---|" * (2 + queued + 2 * len(impls))]
    for dtype, dim, n, k in sorted({(r["dtype"], r["dim"], r["n"], r.get("queue", 0)) for r in records}):
        cells = []
        for impl in impls:
            r = next((r for r in records if (r["impl"], r["dtype"], r["dim"], r["n"], r.get("queue", 0))
                      == (impl, dtype, dim, n, k)), None)
            if r is None or r["status"] != "ok":
                cells += [r["status"] if r else "-", "-"]
            else:
                cells += [f"{r['fwd_bwd_ms']:.1f}", f"{r['peak_mem_bytes'] / 2**20:.1f}"]
        lines.append(f"| {dtype} | {n} | " + (f"{k} | " if queued else "") + " | ".join(cells) + " |")
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
