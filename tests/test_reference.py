"""The reference against the contract written out as loops: the specification checks itself."""
import math

import pytest
import torch

from helpers import OFFICIAL_CASES, OFFICIAL_FEATURES, sample_inputs
from supcon_fast.reference import flatten_views, supcon_loss_reference, supcon_per_anchor_reference


def contract_by_loops(features, labels, temperature, base_temperature, mode, variant):
    """The formulas of docs/design.md ("The loss contract"), one anchor at a time, in fp64 Python floats."""
    bsz, n_views = features.shape[:2]
    z = flatten_views(features.double()).tolist()
    y = (labels.tolist() if labels is not None else list(range(bsz))) * n_views
    n = len(z)
    anchors = range(n) if mode == "all" else range(bsz)
    terms = []
    for i in anchors:
        s = [sum(a * b for a, b in zip(z[i], z[j])) / temperature for j in range(n)]
        others = [j for j in range(n) if j != i]
        pos = [j for j in others if y[j] == y[i]]
        if not pos:
            continue
        lse = math.log(sum(math.exp(s[j]) for j in others))
        if variant == "out":
            terms.append(lse - sum(s[p] for p in pos) / len(pos))
        else:
            terms.append(lse - math.log(sum(math.exp(s[p]) for p in pos)) + math.log(len(pos)))
    return (temperature / base_temperature) * sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("labels", ["none", "few", "one", "distinct"])
@pytest.mark.parametrize("n_views", [1, 2, 3])
def test_reference_matches_contract(mode, variant, labels, n_views):
    f, y = sample_inputs(6, n_views, 5, labels=labels, requires_grad=False)
    got = supcon_loss_reference(f, y, temperature=0.2, base_temperature=0.1, contrast_mode=mode, variant=variant)
    want = contract_by_loops(f, y, 0.2, 0.1, mode, variant)
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_reference_no_positive_is_exactly_zero_with_zero_grads():
    f, y = sample_inputs(5, 1, 4, labels="distinct")
    loss = supcon_loss_reference(f, y, variant="in")
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(f.grad, torch.zeros_like(f))


def test_reference_mask_equals_labels():
    f, y = sample_inputs(9, 2, 6, labels="few", requires_grad=False)
    mask = (y[:, None] == y[None, :]).double()
    for variant in ("out", "in"):
        a = supcon_loss_reference(f, y, variant=variant)
        b = supcon_loss_reference(f, mask=mask, variant=variant)
        assert torch.allclose(a, b, rtol=1e-13, atol=0)


@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("variant", ["out", "in"])
def test_anchor_block_form_matches_reference(mode, variant):
    """The anchor-block reference (one rank's [M, N] block) reduces to the same loss."""
    f, y = sample_inputs(13, 3, 7, labels="few", requires_grad=False)
    z = flatten_views(f)
    m = z.shape[0] if mode == "all" else 13
    per_anchor, npos = supcon_per_anchor_reference(z, y.repeat(3), 0, m, temperature=0.3, variant=variant)
    got = per_anchor.sum() / (npos > 0).sum()
    want = supcon_loss_reference(f, y, temperature=0.3, contrast_mode=mode, variant=variant)
    assert torch.allclose(got, want, rtol=1e-12)
    # a block at an offset is the same rows of the full block
    part, _ = supcon_per_anchor_reference(z, y.repeat(3), 5, 9, temperature=0.3, variant=variant)
    full, _ = supcon_per_anchor_reference(z, y.repeat(3), 0, z.shape[0], temperature=0.3, variant=variant)
    assert torch.allclose(part, full[5:14], rtol=1e-12)


@pytest.mark.parametrize("variant,denominator,cap,expected,labels", OFFICIAL_CASES,
                         ids=[f"{c[0]}-{c[1]}-cap{c[2]}" for c in OFFICIAL_CASES])
def test_official_denominator_modes_and_cap(variant, denominator, cap, expected, labels):
    z = flatten_views(torch.tensor(OFFICIAL_FEATURES, dtype=torch.float64))
    y = torch.tensor(labels).repeat(2)                       # view-major rows: the labels of each view
    per_anchor, _ = supcon_per_anchor_reference(z, y, 0, 6, temperature=1.0, variant=variant,
                                                denominator=denominator, positives_cap=cap, n_views=2)
    per_sample = per_anchor.view(2, 3).mean(0)
    torch.testing.assert_close(per_sample, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-5)


def test_default_options_are_todays_loss():
    f, y = sample_inputs(9, 3, 4, seed=2, requires_grad=False)
    z = flatten_views(f)
    for variant in ("out", "in"):
        a, npos = supcon_per_anchor_reference(z, y.repeat(3), 0, 27, temperature=0.2, variant=variant)
        b, _ = supcon_per_anchor_reference(z, y.repeat(3), 0, 27, temperature=0.2, variant=variant,
                                           denominator="all", positives_cap=-1, n_views=3)
        assert torch.equal(a, b)
        loss = supcon_loss_reference(f, y, temperature=0.2, variant=variant)
        torch.testing.assert_close(a[npos > 0].mean(), loss)


def test_cap_keeps_the_first_samples_of_the_class_in_batch_order():
    """Anchor sample 2 of class 0 among samples 0, 2, 3, 5 of class 0: cap 1 sample -> sample 0 (the
    first other one), cap 2 -> 0 and 3; its own other view is always a positive."""
    y = torch.tensor([0, 1, 0, 0, 1, 0])
    z = flatten_views(torch.randn(6, 2, 4, dtype=torch.float64))
    for cap, kept in ((2, {0}), (4, {0, 3}), (0, set())):
        _, npos = supcon_per_anchor_reference(z, y.repeat(2), 2, 1, temperature=1.0, positives_cap=cap, n_views=2)
        assert int(npos[0]) == 1 + 2 * len(kept)              # own other view + 2 views per kept sample
    with pytest.raises(ValueError, match="positives_cap"):
        supcon_per_anchor_reference(z, y.repeat(2), 0, 12, positives_cap=3, n_views=2)
    with pytest.raises(ValueError, match="denominator"):
        supcon_per_anchor_reference(z, y.repeat(2), 0, 12, denominator="some")
