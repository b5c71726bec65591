"""The reference against the contract written out as loops: the specification checks itself."""
import math

import pytest
import torch

from helpers import sample_inputs
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
