"""Test harness for the CUDA kernels on machines without a GPU.

``cuda_emulation()`` runs the real ``csrc/cuda`` kernels and host code on the CPU: inside it, the
fused op on CPU tensors (``supcon_loss(..., impl="fused")``, ``ops.supcon_fwd``, autograd included)
goes through the CUDA launch planning and kernels compiled against an emulation of the CUDA
execution model (``csrc/emu/``), instead of the CPU op. It shows the kernels' logic, indexing,
bounds, barriers, dtype handling and launch configuration; it cannot show speed, real concurrency
between blocks, the hardware's fragment layouts or register pressure.

    from supcon_fast.testing import cuda_emulation
    with cuda_emulation(schedule="shuffled", seed=3) as emu:
        loss = supcon_loss(features, labels, impl="fused")   # features on the CPU
        loss.backward()
    emu.launches   # [{'kernel': 'supcon_fwd_tile_kernel<fp32>', 'grid': (2, 1, 1), 'block': (256, 1, 1), 'smem_bytes': ...}, ...]
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

import torch

from . import ops

SCHEDULES = ("ascending", "descending", "shuffled")
POISONS = (1, 2)  # 1: 0xff bytes (NaN in every float view); 2: 0x7f bytes (finite in fp32, NaN in fp16)


def gpu_archs() -> dict[str, dict]:
    """The GPUs the emulation plans for, from its runtime's table (csrc/emu/emu_runtime.cpp):
    name -> {'example': 'H200', 'sms': 132, 'smem_optin': 232448} (opt-in shared memory per block, bytes)."""
    if not ops.available():
        return {}
    return {a["name"]: {k: v for k, v in a.items() if k != "name"}
            for a in json.loads(torch.ops.supcon_fast.emulation_archs())}


ARCHS = tuple(gpu_archs())  # sm_80, sm_86, sm_89, sm_90, sm_100, sm_120


@dataclass
class Emulation:
    """What one ``cuda_emulation`` session did: ``launches`` (filled when the session ends) holds one
    dict per kernel launch with ``kernel``, ``grid`` and ``block`` (3-tuples) and ``smem_bytes``
    (dynamic + static shared memory per block)."""
    schedule: str
    seed: int
    poison: int
    arch: str
    sm_count: int | None = None
    launches: list[dict] = field(default_factory=list)


def _records(launches_json: str) -> list[dict]:
    return [{"kernel": r["kernel"], "grid": tuple(r["grid"]), "block": tuple(r["block"]),
             "smem_bytes": r["dynamic_smem"] + r["static_smem"]} for r in json.loads(launches_json)]


@contextlib.contextmanager
def cuda_emulation(schedule: str = "ascending", seed: int = 0, *, poison: int = 1, arch: str = "sm_90",
                   sm_count: int | None = None):
    """Runs the fused op's CUDA kernels on the CPU under emulation for the duration of the block.

    schedule: order of the threads of a block between barriers (and of the blocks of a grid):
        'ascending', 'descending' or 'shuffled' (seeded by ``seed``, redrawn at every barrier).
    poison: the pattern shared memory and kernel outputs start with (1 or 2); results must not
        depend on it.
    arch: the GPU the host planning sees (SM count, opt-in shared memory): one of ``ARCHS``.
    sm_count: overrides the arch's SM count in the planning (tests use it to reach the plans of a
        large problem on a small one: e.g. a single column split, which a big GPU takes only at large N).
    Sessions do not nest and are not thread-safe. Yields an :class:`Emulation`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if poison not in POISONS:
        raise ValueError(f"poison must be one of {POISONS}, got {poison!r}")
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if sm_count is not None and (not isinstance(sm_count, int) or sm_count < 1):
        raise ValueError(f"sm_count must be an int >= 1 or None, got {sm_count!r}")
    if not ops.available():
        raise RuntimeError(f"cuda_emulation needs the compiled extension: {ops.build_error()}")
    session = Emulation(schedule, seed, poison, arch, sm_count)
    torch.ops.supcon_fast.emulation_start(schedule, seed, poison, arch, sm_count or 0)
    try:
        yield session
    finally:
        session.launches = _records(torch.ops.supcon_fast.emulation_stop())
