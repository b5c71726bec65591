"""Public API: argument errors, impl selection, gradcheck, opcheck, torch.compile, autocast."""
import pytest
import torch

from helpers import DEVICES, loss_and_grad, rel_err, sample_inputs
from supcon_fast import SupConLoss, ops, supcon_loss, supcon_loss_reference


def test_fused_kernel_is_built_for_cpu():
    assert ops.available(), f"extension not built: {ops.build_error()}"
    assert ops.has_kernel("cpu")


# --- bad input: every listed case raises the named error, naming the argument ---

def _f(*shape, **kw):
    return torch.randn(*shape, **kw)


BAD_INPUTS = [
    (dict(features=_f(4, 8)), ValueError, "features"),
    (dict(features=_f(4, 2, 8), labels=torch.arange(5)), ValueError, "labels"),
    (dict(features=_f(4, 2, 8), labels=torch.rand(4)), TypeError, "labels"),
    (dict(features=_f(4, 2, 8), labels=torch.arange(4), mask=torch.eye(4)), ValueError, "mask"),
    (dict(features=_f(4, 2, 8), contrast_mode="some"), ValueError, "contrast_mode"),
    (dict(features=_f(4, 2, 8), variant="both"), ValueError, "variant"),
    (dict(features=_f(4, 2, 8), temperature=0.0), ValueError, "temperature"),
    (dict(features=_f(4, 2, 8), temperature=-1.0), ValueError, "temperature"),
    (dict(features=_f(4, 2, 8), impl="fastest"), ValueError, "impl"),
    (dict(features=_f(4, 2, 8), labels=torch.arange(4, device="meta")), ValueError, "device"),
    (dict(features=_f(4, 2, 8), mask=torch.eye(3)), ValueError, "mask"),
    (dict(features=_f(4, 2, 8), mask=torch.eye(4), impl="fused"), ValueError, "mask"),
    (dict(features=_f(4, 2, 8, device="meta"), impl="fused"), ValueError, "fused"),
    (dict(features=torch.ones(4, 2, 8, dtype=torch.long)), TypeError, "features"),
]


@pytest.mark.parametrize("kwargs,error,word", BAD_INPUTS, ids=[f"{e.__name__}-{w}-{i}" for i, (_, e, w) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_named_error(kwargs, error, word):
    with pytest.raises(error, match=word):
        supcon_loss(**kwargs)


def test_module_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0)
    with pytest.raises(ValueError, match="contrast_mode"):
        SupConLoss(contrast_mode="none")


# --- paths agree ---

@pytest.mark.parametrize("variant", ["out", "in"])
def test_auto_uses_fused_and_matches_reference(variant, monkeypatch):
    f, y = sample_inputs(23, 2, 16, dtype=torch.float64)
    calls = []
    real = ops.supcon_fwd
    monkeypatch.setattr(ops, "supcon_fwd", lambda *a, **k: calls.append(1) or real(*a, **k))
    loss_auto, grad_auto = loss_and_grad(supcon_loss, f, y, variant=variant)
    assert calls, "impl='auto' did not take the fused path on CPU"
    loss_ref, grad_ref = loss_and_grad(supcon_loss, f, y, variant=variant, impl="reference")
    assert rel_err(loss_auto, loss_ref) < 1e-10 and rel_err(grad_auto, grad_ref) < 1e-10


def test_mask_goes_to_reference_and_matches_labels():
    f, y = sample_inputs(15, 2, 8, dtype=torch.float64)
    mask = (y[:, None] == y[None, :]).float()
    a = supcon_loss(f, mask=mask)
    b = supcon_loss(f, y)
    assert torch.allclose(a.double(), b, rtol=1e-10)


def test_module_is_drop_in_for_popular_reference_signature():
    f, y = sample_inputs(12, 2, 8, dtype=torch.float32, requires_grad=False)
    crit = SupConLoss(temperature=0.07, contrast_mode="all", base_temperature=0.07)
    assert torch.allclose(crit(f, y), supcon_loss_reference(f, y, temperature=0.07), rtol=1e-5)
    assert torch.allclose(crit(f), supcon_loss_reference(f, None, temperature=0.07), rtol=1e-5)
    # labels given as a column, like some callers do
    assert torch.allclose(crit(f, y.view(-1, 1)), crit(f, y))
    assert "temperature=0.07" in repr(crit)


def test_trailing_dims_are_flattened():
    f, y = sample_inputs(6, 2, 12, dtype=torch.float64, requires_grad=False)
    a = supcon_loss(f.view(6, 2, 3, 4), y)
    b = supcon_loss(f, y)
    assert torch.allclose(a, b, rtol=1e-12)


# --- autograd, op registration, compile ---

@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("labels", ["few", "none"])
def test_gradcheck_fp64(mode, variant, labels):
    f, y = sample_inputs(5, 2, 4, labels=labels, dtype=torch.float64, seed=1)
    fn = lambda x: supcon_loss(x, y, temperature=0.5, contrast_mode=mode, variant=variant, impl="fused")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (f,), eps=1e-6, atol=1e-8)


def _op_samples():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        for offset, m, variant_in in [(0, 13, False), (0, 13, True), (4, 6, False), (2, 9, True)]:
            z = torch.nn.functional.normalize(torch.randn(13, 7, generator=g, dtype=torch.float64), dim=1).to(dtype)
            y = torch.randint(0, 3, (13,), generator=g)
            yield z, y, offset, m, 0.2, variant_in


@pytest.mark.parametrize("sample", list(_op_samples()), ids=lambda s: f"{s[0].dtype}-{s[2]}-{s[3]}-{s[5]}")
def test_opcheck(sample):
    z, y, offset, m, t, variant_in = sample
    torch.library.opcheck(torch.ops.supcon_fast.supcon_fwd.default, (z.requires_grad_(), y, offset, m, t, variant_in))
    loss, lse, pos, npos, _ = torch.ops.supcon_fast.supcon_fwd.default(z.detach(), y, offset, m, t, variant_in)
    torch.library.opcheck(torch.ops.supcon_fast.supcon_bwd.default,
                          (torch.ones_like(loss), z.detach(), y, lse, pos, npos, offset, m, t, variant_in))


@pytest.mark.parametrize("backend,variant", [("inductor", "out"), ("aot_eager", "in")])
def test_torch_compile_fullgraph(backend, variant):
    torch._dynamo.reset()
    f, y = sample_inputs(19, 2, 16, dtype=torch.float32)

    def step(x, labels):
        z = torch.nn.functional.normalize(x * 2.0, dim=-1)
        return supcon_loss(z, labels, temperature=0.1, variant=variant)

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    loss_c, grad_c = loss_and_grad(compiled, f, y)
    loss_e, grad_e = loss_and_grad(step, f, y)
    assert rel_err(loss_c, loss_e) < 1e-6 and rel_err(grad_c, grad_e) < 1e-5


# --- autocast ---

@pytest.mark.parametrize("device", DEVICES)
def test_autocast_returns_fp32_loss_and_input_dtype_grads(device):
    f, y = sample_inputs(21, 2, 32, dtype=torch.float32, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = supcon_loss(f, y, impl="fused")
    (grad,) = torch.autograd.grad(loss, f)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    loss32 = supcon_loss(f, y, impl="fused")
    assert rel_err(loss, loss32) < 2e-2  # bf16 inputs: about 3 significant digits
