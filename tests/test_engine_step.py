"""The training step feeds the loss exactly the dtype the precision policy resolved (CPU autocast here):
the fused op receives bf16 under --amp bf16, and no autocast region recasts the features."""
import pytest
import torch

import supcon_fast.loss as loss_mod
from supcon_fast import ops
from supcon_fast.engine.losses import make_criterion
from supcon_fast.engine.optim import WarmupCosine, build_optimizer
from supcon_fast.engine.precision import grad_scaler, resolve_loss_dtype
from supcon_fast.engine.step import TrainStep, forward_loss
from supcon_fast.models import build_model
from supcon_fast.reference import supcon_loss_reference

B, V = 6, 2
needs_op = pytest.mark.skipif(not ops.has_kernel("cpu"), reason="the fused CPU op is not built")


def tiny(loss="supcon"):
    torch.manual_seed(0)
    model = build_model("resnet18", stem="small", width=4, head="mlp", feat_dim=8, loss=loss, num_classes=3)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(B, 3, 8, 8, generator=g) for _ in range(V)]
    labels = torch.randint(0, 3, (B,), generator=g)
    return model, views, labels


@pytest.fixture
def op_spy(monkeypatch):
    """Records the dtype of every z the fused op receives (the real op still runs)."""
    seen = []
    real = ops.supcon_fwd

    def spy(z, *args, **kwargs):
        seen.append(z.dtype)
        return real(z, *args, **kwargs)
    monkeypatch.setattr(ops, "supcon_fwd", spy)
    return seen


def make_step(model, amp, loss_dtype, loss="supcon", impl="fused"):
    crit = make_criterion(loss, temperature=0.1, impl=impl)
    opt = build_optimizer(model, "sgd", 0.1, weight_decay=1e-4)
    ldt = resolve_loss_dtype(loss_dtype, amp, loss)
    return TrainStep(model, crit, opt, WarmupCosine(opt, 10, 0, 0.1), loss_kind=loss, amp=amp, loss_dtype=ldt,
                     scaler=grad_scaler(amp, ldt, torch.device("cpu")))


@needs_op
@pytest.mark.parametrize("amp,loss_dtype,expected", [
    (torch.bfloat16, "auto", torch.bfloat16),    # --amp bf16: the op gets bf16 (the tensor-core kernel on GPU)
    (torch.bfloat16, "fp32", torch.float32),     # the policy decides, not autocast
    (None, "auto", torch.float32),
    (None, "bf16", torch.bfloat16),
    (None, "fp16", torch.float16),               # fp16 loss input, fp32 network: with a GradScaler
    (torch.float16, "auto", torch.float16),
])
def test_the_op_receives_the_resolved_dtype(op_spy, amp, loss_dtype, expected):
    model, views, labels = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    step = make_step(model, amp, loss_dtype)
    assert (step.scaler is not None) == (expected == torch.float16)
    if step.scaler is not None:   # the default 2**16 skips the first steps while it calibrates
        step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    loss, ok = step(views, labels)
    assert op_spy == [expected]
    assert ok and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())             # weights stay fp32
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the step updated them


@needs_op
def test_an_outer_autocast_does_not_recast_the_features(op_spy):
    """A caller's autocast region (bf16) around the step: the fp32 policy still reaches the op."""
    model, views, labels = tiny()
    step = make_step(model, torch.bfloat16, "fp32")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step(views, labels)
    assert op_spy == [torch.float32]


def test_reference_path_runs_in_the_chosen_dtype(monkeypatch):
    """impl='reference' under --amp bf16 with an fp32 loss: its matmul is not downcast by autocast; the loss
    equals the reference evaluated on the same features outside any autocast region, exactly."""
    seen = []
    real = loss_mod.supcon_loss_reference

    def spy(features, *args, **kw):
        out = real(features, *args, **kw)
        seen.append((features.detach().clone(), out.detach(), args, kw))
        return out
    monkeypatch.setattr(loss_mod, "supcon_loss_reference", spy)
    model, views, labels = tiny()
    crit = make_criterion("supcon", temperature=0.1, impl="reference")
    loss = forward_loss(model, crit, views, labels, loss_kind="supcon", amp=torch.bfloat16,
                        loss_dtype=torch.float32)
    (features, out, args, kw), = seen
    assert features.dtype == torch.float32 and out.dtype == torch.float32
    assert torch.equal(out, supcon_loss_reference(features, *args, **kw)) and torch.equal(loss, out)


def test_cross_entropy_gets_fp32_logits_under_bf16():
    model, views, labels = tiny("ce")
    seen = []
    crit = make_criterion("ce")

    def spy(logits, y):
        seen.append(logits.dtype)
        return crit(logits, y)
    loss = forward_loss(model, spy, views, labels, loss_kind="ce", amp=torch.bfloat16)
    assert seen == [torch.float32] and loss.dtype == torch.float32


@needs_op
def test_default_loss_dtype_is_auto(op_spy):
    """TrainStep / forward_loss without a loss_dtype follow 'auto': the autocast dtype."""
    model, views, labels = tiny()
    forward_loss(model, make_criterion("supcon"), views, labels, loss_kind="supcon", amp=torch.bfloat16)
    crit = make_criterion("supcon")
    opt = build_optimizer(model, "sgd", 0.1)
    TrainStep(model, crit, opt, WarmupCosine(opt, 10, 0, 0.1), loss_kind="supcon", amp=None)(views, labels)
    assert op_spy == [torch.bfloat16, torch.float32]
