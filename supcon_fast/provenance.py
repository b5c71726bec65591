"""Where a result came from: the commit, the machine and the time, recorded in every results JSON; and
the atomic write of such a JSON."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    """HEAD of this checkout, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine_info(device: str = "cpu") -> dict:
    """Host, CPU model, cores, memory, threads and library versions (and the GPU for device 'cuda')."""
    import torch
    info = {"hostname": platform.node(), "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    try:
        info["mem_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    for name, module in (("torchvision", "torchvision"), ("dali", "nvidia.dali")):
        try:
            info[name] = __import__(module, fromlist=["__version__"]).__version__
        except ImportError:
            info[name] = None
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """JSON to ``<path>.tmp``, then renamed: a reader (or a run killed mid-write) never sees half a file."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
