"""The precision policy (engine/precision.py): --amp and --loss-dtype resolve in one place."""
import pytest
import torch

from supcon_fast.engine import precision
from supcon_fast.engine.precision import dtype_name, grad_scaler, loss_features, resolve_loss_dtype

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.mark.parametrize("loss_dtype,amp,expected", [
    ("auto", None, FP32),          # mixed precision off: fp32
    ("auto", BF16, BF16),          # on: the autocast dtype
    ("auto", FP16, FP16),
    ("fp32", BF16, FP32),          # explicit values win over the autocast dtype
    ("fp32", None, FP32),
    ("bf16", None, BF16),
    ("bf16", FP16, BF16),
    ("fp16", None, FP16),          # allowed without fp16 autocast (the CPU op upcasts it)
    ("fp16", BF16, FP16),
    ("float32", BF16, FP32),       # torch's names, as the resolved config records them
    ("bfloat16", None, BF16),
    ("float16", None, FP16),
])
def test_resolution_table(loss_dtype, amp, expected):
    assert resolve_loss_dtype(loss_dtype, amp) == expected
    assert resolve_loss_dtype(loss_dtype, amp, "simclr") == expected


@pytest.mark.parametrize("device,amp,loss_dtype,expected", [
    ("cpu", "auto", "auto", (None, FP32)),       # amp auto: fp32 on CPU
    ("cuda", "auto", "auto", (BF16, BF16)),      # bf16 on GPU (a device object only: no GPU needed)
    ("cpu", "bf16", "auto", (BF16, BF16)),
    ("cpu", "fp16", "auto", (FP16, FP16)),
    ("cpu", "fp32", "auto", (None, FP32)),
    ("cuda", "auto", "fp32", (BF16, FP32)),
])
def test_resolve_from_a_config(device, amp, loss_dtype, expected):
    assert precision.resolve({"amp": amp, "loss_dtype": loss_dtype, "loss": "supcon"}, torch.device(device)) == expected


def test_cross_entropy_is_fp32():
    assert resolve_loss_dtype("auto", BF16, "ce") == FP32
    assert resolve_loss_dtype("float32", FP16, "ce") == FP32
    with pytest.raises(ValueError, match="loss_dtype"):
        resolve_loss_dtype("bf16", BF16, "ce")


@pytest.mark.parametrize("bad", ["bf17", "half", "fp64", ""])
def test_bad_value_names_loss_dtype(bad):
    with pytest.raises(ValueError, match="loss_dtype"):
        resolve_loss_dtype(bad, None)


def test_dtype_names_are_torchs():
    assert [dtype_name(d) for d in (BF16, FP16, FP32)] == ["bfloat16", "float16", "float32"]
    for name in ("bfloat16", "float16", "float32"):   # a recorded name resolves to itself
        assert dtype_name(resolve_loss_dtype(name, None)) == name


@pytest.mark.parametrize("dtype", [FP32, BF16, FP16])
def test_loss_features_normalize_in_fp32_then_cast(dtype):
    g = torch.Generator().manual_seed(0)
    out = (torch.randn(64, 128, generator=g) * 7).to(BF16)        # a head output under bf16 autocast
    z = loss_features(out, dtype)
    assert z.dtype == dtype
    expected = torch.nn.functional.normalize(out.float(), dim=-1).to(dtype)
    assert torch.equal(z, expected)
    # a single rounding of a unit vector: within the dtype's half-ulp of 1
    assert (z.float().norm(dim=-1) - 1).abs().max() <= 128 ** 0.5 * torch.finfo(dtype).eps / 2 + 1e-6


def test_loss_features_gradient_flows_to_fp32():
    out = torch.randn(4, 8, requires_grad=True)
    loss_features(out, BF16).float().sum().backward()
    assert out.grad.dtype == FP32 and torch.isfinite(out.grad).all()


def test_grad_scaler_when_fp16_anywhere():
    cpu = torch.device("cpu")
    assert grad_scaler(None, FP32, cpu) is None and grad_scaler(BF16, BF16, cpu) is None
    assert isinstance(grad_scaler(FP16, FP16, cpu), torch.amp.GradScaler)
    assert isinstance(grad_scaler(None, FP16, cpu), torch.amp.GradScaler)   # fp16 loss input, fp32 network

