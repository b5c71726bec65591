"""Mixed precision: the one place that decides the network's autocast dtype and the loss's input dtype.

    amp_dtype(amp, device)                 --amp        -> the autocast dtype of the network, or None
    resolve_loss_dtype(loss_dtype, amp)    --loss-dtype -> the dtype the loss receives
    loss_features(out, dtype)              the embedding, L2-normalized in fp32, then cast to that dtype

``--loss-dtype auto`` is the autocast dtype when mixed precision is on, else fp32; ``fp32``, ``bf16``,
``fp16`` force it (the torch names ``float32``, ``bfloat16``, ``float16`` are accepted too: the resolved
config and the run summary record the torch name). The model itself decides no dtype: it returns its
projection in whatever dtype autocast produced, and the training step (engine/step.py) hands it to
``loss_features`` outside any autocast region, so the loss sees exactly the resolved dtype (autocast
would otherwise recast it: ``supcon_loss`` casts to the autocast dtype, and the reference path's matmul
runs in it). The cross-entropy baseline's loss is always fp32.

On CUDA a bf16/fp16 loss input runs the fused op's tensor-core kernels, fp32 the FFMA kernel. The CPU
op upcasts fp16/bf16 to fp32 once, so there a low-precision loss input only rounds the features (see
docs/results.md, "Loss input precision", for what that costs against fp32).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

AMP_CHOICES = ("auto", "bf16", "fp16", "fp32")
# --loss-dtype: our short names, and torch's (what the resolved config records)
LOSS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
               "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOSS_DTYPE_CHOICES = ("auto", *LOSS_DTYPES)
CONTRASTIVE = ("supcon", "simclr")


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """'auto' -> bf16 on GPU, none on CPU (CPU autocast is slower than fp32 on most CPUs)."""
    if amp == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else None
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp: {amp!r} is not one of {list(AMP_CHOICES)}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[amp]


def autocast(dtype: torch.dtype | None, device: torch.device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def resolve_loss_dtype(loss_dtype: str, amp: torch.dtype | None, loss: str = "supcon") -> torch.dtype:
    """The dtype of the loss input: ``loss_dtype`` (auto | fp32 | bf16 | fp16, or a torch name) given the
    autocast dtype ``amp`` (None: mixed precision off). 'auto': ``amp`` when set, else fp32.

    ``loss='ce'``: cross-entropy always runs in fp32; only auto and fp32 are accepted.
    """
    if loss_dtype == "auto":
        dtype = amp if amp is not None else torch.float32
    elif loss_dtype in LOSS_DTYPES:
        dtype = LOSS_DTYPES[loss_dtype]
    else:
        raise ValueError(f"loss_dtype: {loss_dtype!r} is not one of {list(LOSS_DTYPE_CHOICES)}")
    if loss not in CONTRASTIVE:
        if loss_dtype not in ("auto", "fp32", "float32"):
            raise ValueError(f"loss_dtype: {loss_dtype!r} applies to the contrastive losses {list(CONTRASTIVE)}; "
                             f"--loss {loss} computes cross-entropy in fp32 (use auto or fp32)")
        dtype = torch.float32
    return dtype


def resolve(cfg: dict, device: torch.device) -> tuple[torch.dtype | None, torch.dtype]:
    """(autocast dtype or None, loss input dtype) of a resolved config on ``device``."""
    amp = amp_dtype(cfg["amp"], device)
    return amp, resolve_loss_dtype(cfg.get("loss_dtype", "auto"), amp, cfg.get("loss", "supcon"))


def dtype_name(dtype: torch.dtype) -> str:
    """torch's name: torch.bfloat16 -> 'bfloat16'."""
    return str(dtype).removeprefix("torch.")


def loss_features(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Embeddings [..., dim] in any dtype -> L2-normalized in fp32 (fp64 stays fp64), then cast to ``dtype``.

    The norm is taken in fp32 because in bf16 the norm of a 128-d vector loses digits the loss needs.
    """
    z = out if out.dtype == torch.float64 else out.float()
    return F.normalize(z, dim=-1).to(dtype)


def grad_scaler(amp: torch.dtype | None, loss_dtype: torch.dtype, device: torch.device):
    """A GradScaler when fp16 is anywhere in the backward (network or loss input), else None."""
    if torch.float16 in (amp, loss_dtype):
        return torch.amp.GradScaler(torch.device(device).type)
    return None


def no_autocast(device: torch.device):
    """Autocast off on ``device``'s type: the loss runs in the dtype of its input, nothing else."""
    return torch.autocast(torch.device(device).type, enabled=False)
