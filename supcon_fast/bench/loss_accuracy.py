"""What a low-precision loss input costs in accuracy: the fused op on bf16 / fp16 features against fp32
and against the fp64 reference, loss value and gradient. ``tools/loss_accuracy.py`` is the wrapper.

Each case follows the trainer (engine/precision.py): unit-norm features held in fp32, cast to the loss
dtype, then the fused op; the gradient is taken with respect to the fp32 features (through the cast,
as in training). The truth is ``supcon_fast.reference`` in fp64 on the same features. Also recorded,
per dtype: the fp64 reference on the *rounded* features, which separates what rounding the input costs
from what the kernel's own arithmetic adds.

Feature distributions, N views of N/2 samples (two views each), ``classes`` labels:
``isotropic``: random unit vectors (an untrained network: logits within about +-1 / T);
``clustered``: unit vectors around a random unit mean per class, within-class cosine about 0.64 (a
trained embedding: positive logits about 0.64 / T).

Kernels: ``cpu``, the fused CPU op (it upcasts fp16 / bf16 to fp32 once); ``cuda-emulation``, the
CUDA kernels run on the CPU under ``supcon_fast.testing.cuda_emulation`` (fp16 / bf16 on the
tensor-core path: fp32 accumulation, and the backward's H tile rounded to the input's half type), so
what a GPU computes is measured without one.

Errors: loss ``|L - L64| / |L64|``; gradient ``||g - g64|| / ||g64||`` (Frobenius) and
``max |g - g64| / max |g64|``.
"""
from __future__ import annotations

import contextlib
import statistics

import torch

from ..provenance import git_commit, machine_info, utc_now

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KINDS = ("isotropic", "clustered")
KERNELS = ("cpu", "cuda-emulation")
CLUSTER_SPREAD = 0.75  # noise norm around the class mean: within-class cosine ~ 1 / (1 + 0.75^2) = 0.64


def make_features(n: int, dim: int, classes: int, kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm fp64 features [n // 2, 2, dim] and labels [n // 2] in [0, classes)."""
    if n % 2:
        raise ValueError(f"n: the views of two-view samples, must be even, got {n}")
    g = torch.Generator().manual_seed(seed)
    bsz = n // 2
    labels = torch.randint(0, classes, (bsz,), generator=g)
    noise = torch.randn(bsz, 2, dim, generator=g, dtype=torch.float64)
    if kind == "isotropic":
        f = noise
    elif kind == "clustered":
        means = torch.nn.functional.normalize(torch.randn(classes, dim, generator=g, dtype=torch.float64), dim=-1)
        f = means[labels][:, None, :] + CLUSTER_SPREAD * noise / dim ** 0.5
    else:
        raise ValueError(f"kind: {kind!r} is not one of {list(KINDS)}")
    return torch.nn.functional.normalize(f, dim=-1), labels


def _loss_and_grad(fn, leaf: torch.Tensor, cast: torch.dtype | None, labels, **kw):
    """loss and d loss / d leaf of fn(leaf.to(cast), labels), as float64 on the CPU."""
    x = leaf.detach().clone().requires_grad_(True)
    loss = fn(x if cast is None else x.to(cast), labels, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach().double().cpu(), grad.double().cpu()


def _errors(loss, grad, loss64, grad64) -> dict:
    return {"loss": loss.item(),
            "loss_rel_err": ((loss - loss64).abs() / loss64.abs()).item(),
            "grad_rel_err": ((grad - grad64).norm() / grad64.norm()).item(),
            "grad_rel_err_max": ((grad - grad64).abs().max() / grad64.abs().max()).item()}


def measure(n: int = 2048, dim: int = 128, classes: int = 100, temperatures=(0.1, 0.07), dtypes=("fp32", "bf16"),
            kinds=KINDS, seeds=(0, 1, 2), variant: str = "out", kernel: str = "cpu", progress=print) -> dict:
    """Every (kind, temperature, seed, dtype) case; returns the records, a summary and provenance."""
    from .. import ops, supcon_loss
    from ..reference import supcon_loss_reference
    from ..testing import cuda_emulation
    if kernel not in KERNELS:
        raise ValueError(f"kernel: {kernel!r} is not one of {list(KERNELS)}")
    device = "cpu"
    if not ops.has_kernel(device):
        raise RuntimeError(f"no fused kernel for device {device!r} (extension: {ops.build_error()})")
    session = cuda_emulation if kernel == "cuda-emulation" else contextlib.nullcontext
    bad = sorted(set(dtypes) - set(DTYPES))
    if bad:
        raise ValueError(f"dtypes: {bad} not in {list(DTYPES)}")
    records = []
    for kind in kinds:
        for temperature in temperatures:
            kw = dict(temperature=temperature, variant=variant)
            for seed in seeds:
                f64, y = make_features(n, dim, classes, kind, seed)
                loss64, grad64 = _loss_and_grad(supcon_loss_reference, f64, None, y, **kw)
                f32, y_dev = f64.to(device=device, dtype=torch.float32), y.to(device)
                for name in dtypes:
                    dt = DTYPES[name]
                    with session():
                        loss, grad = _loss_and_grad(supcon_loss, f32, dt, y_dev, impl="fused", **kw)
                    rec = {"kind": kind, "temperature": temperature, "seed": seed, "dtype": name, "n": n, "dim": dim,
                           "classes": classes, "variant": variant, "impl": "fused", "kernel": kernel,
                           "loss_fp64": loss64.item(), **_errors(loss, grad, loss64, grad64)}
                    # the exact loss of the rounded features: what rounding the input alone costs
                    rounded = f32.to(dt).to(device="cpu", dtype=torch.float64)
                    lr, gr = _loss_and_grad(supcon_loss_reference, rounded, None, y, **kw)
                    rec["input_rounding"] = _errors(lr, gr, loss64, grad64)
                    records.append(rec)
                    progress(f"{kind:>9} T={temperature:<5} seed {seed} {name}: loss rel err {rec['loss_rel_err']:.2e} "
                             f"(input rounding {rec['input_rounding']['loss_rel_err']:.2e}), grad rel err "
                             f"{rec['grad_rel_err']:.2e} (input rounding {rec['input_rounding']['grad_rel_err']:.2e})")
    return {"what": "fused SupCon loss on low-precision inputs vs fp64 reference (see supcon_fast/bench/loss_accuracy.py)",
            "config": {"n": n, "dim": dim, "classes": classes, "temperatures": list(temperatures),
                       "dtypes": list(dtypes), "kinds": list(kinds), "seeds": list(seeds), "variant": variant,
                       "kernel": kernel, "cluster_spread": CLUSTER_SPREAD},
            "summary": summarize(records), "records": records, "torch": torch.__version__, "commit": git_commit(),
            "date": utc_now(), "machine": machine_info(device)}


def summarize(records: list[dict]) -> list[dict]:
    """Per (kind, temperature, dtype): the median and the worst error over seeds."""
    out = []
    keys = sorted({(r["kind"], r["temperature"], r["dtype"]) for r in records},
                  key=lambda k: (KINDS.index(k[0]) if k[0] in KINDS else 9, -k[1], list(DTYPES).index(k[2])))
    for kind, temperature, dtype in keys:
        rows = [r for r in records if (r["kind"], r["temperature"], r["dtype"]) == (kind, temperature, dtype)]
        row = {"kind": kind, "temperature": temperature, "dtype": dtype, "seeds": len(rows),
               "loss_fp64": statistics.median(r["loss_fp64"] for r in rows)}
        for key in ("loss_rel_err", "grad_rel_err", "grad_rel_err_max"):
            row[key] = {"median": statistics.median(r[key] for r in rows), "max": max(r[key] for r in rows)}
            row["input_rounding_" + key] = max(r["input_rounding"][key] for r in rows)
        out.append(row)
    return out


def markdown(result: dict) -> str:
    """The summary as a Markdown table (worst case over seeds)."""
    lines = ["| features | T | dtype | loss (fp64) | loss rel. err. | input rounding alone | grad rel. err. "
             "(norm) | input rounding alone | grad rel. err. (max) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["summary"]:
        lines.append(f"| {r['kind']} | {r['temperature']} | {r['dtype']} | {r['loss_fp64']:.3f} | "
                     f"{r['loss_rel_err']['max']:.1e} | {r['input_rounding_loss_rel_err']:.1e} | "
                     f"{r['grad_rel_err']['max']:.1e} | {r['input_rounding_grad_rel_err']:.1e} | "
                     f"{r['grad_rel_err_max']['max']:.1e} |")
    return "\n".join(lines)
