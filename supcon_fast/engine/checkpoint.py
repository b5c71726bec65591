"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and RNG-state capture for exact resume.

Everything stored is a tensor or a plain Python type (RNG states included), so ``weights_only=True``
works and a checkpoint never executes code when loaded.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def rng_state() -> dict:
    """torch (CPU and every CUDA device), numpy and Python RNG states as tensors / plain types."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_TMP = ".tmp"  # suffix of a checkpoint being written; only a complete one is renamed into place


def save_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """Write to ``<path>.tmp`` then ``os.replace``: a crash mid-write never leaves a truncated checkpoint.

    A failed write removes its temporary file; a killed process leaves it, and the next start
    (``resolve_resume``) removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + _TMP)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_partial(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the ``*.pt.tmp`` files an interrupted save left in ``out_dir``; returns them.

    Safe at start-up on every rank: no save runs before the first training step, which every rank
    reaches only after this (the model broadcast and the first all-reduce wait for all of them).
    """
    removed = []
    for p in sorted(Path(out_dir).glob(f"*.pt{_TMP}")) if Path(out_dir).is_dir() else ():
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: checkpoint {str(path)!r} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)


def resolve_resume(resume: str | None, out_dir: str | os.PathLike) -> Path | None:
    """``None``/'' -> no resume; 'auto' -> <out>/last.pt if it exists (else start fresh); else the given path.

    A temporary file left in ``out_dir`` by a killed save is removed first (it may be incomplete)
    and is refused when named explicitly; only files renamed into place by ``save_atomic`` load.
    """
    if resume and str(resume).endswith(f".pt{_TMP}"):
        raise ValueError(f"resume: {resume!r} is the temporary file of a checkpoint save that did not "
                         f"finish (it may be incomplete); resume from the .pt file beside it")
    remove_partial(out_dir)
    if not resume:
        return None
    if resume == "auto":
        last = Path(out_dir) / "last.pt"
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume: checkpoint {resume!r} does not exist")
    return path


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers (its state_dict has clean keys)."""
    while True:
        if hasattr(model, "module"):          # DistributedDataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):     # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
