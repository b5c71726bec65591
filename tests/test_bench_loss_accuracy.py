"""The low-precision accuracy measurement (supcon_fast/bench/loss_accuracy.py): schema, and sane orders of error."""
import json

import pytest
import torch

from supcon_fast import ops
from supcon_fast.bench import loss_accuracy

pytestmark = pytest.mark.skipif(not ops.has_kernel("cpu"), reason="the fused CPU op is not built")


@pytest.fixture(scope="module")
def result():
    return loss_accuracy.measure(n=128, dim=16, classes=5, temperatures=(0.1,), dtypes=("fp32", "bf16"),
                                 seeds=(0, 1), progress=lambda s: None)


def test_schema_and_table(result):
    assert {"config", "summary", "records", "torch", "commit", "date", "machine"} <= set(result)
    assert len(result["records"]) == 2 * 1 * 2 * 2          # kinds x temperatures x seeds x dtypes
    assert [(r["kind"], r["dtype"]) for r in result["summary"]] == [
        ("isotropic", "fp32"), ("isotropic", "bf16"), ("clustered", "fp32"), ("clustered", "bf16")]
    json.dumps(result)
    table = loss_accuracy.markdown(result)
    assert "| clustered | 0.1 | bf16 |" in table


def test_error_orders(result):
    for r in result["summary"]:
        if r["dtype"] == "fp32":   # the contract: fp32 within 1e-5 of fp64
            assert r["loss_rel_err"]["max"] < 1e-5 and r["grad_rel_err"]["max"] < 1e-5
        else:                      # bf16 keeps 8 bits: errors of order 2^-9, and above fp32's
            assert 0 < r["grad_rel_err"]["max"] < 3e-2 and r["loss_rel_err"]["max"] < 1e-2
            assert r["input_rounding_grad_rel_err"] > 0
    fp32, bf16 = (next(r for r in result["summary"] if (r["kind"], r["dtype"]) == ("clustered", d))
                  for d in ("fp32", "bf16"))
    assert bf16["grad_rel_err"]["max"] > 10 * fp32["grad_rel_err"]["max"]


def test_features_are_unit_and_clustered():
    f, y = loss_accuracy.make_features(400, 32, 4, "clustered", seed=0)
    assert f.shape == (200, 2, 32) and f.dtype == torch.float64 and y.shape == (200,)
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(200, 2, dtype=torch.float64))
    same = (f[:, 0] * f[:, 1]).sum(-1).mean()                 # two views of a sample share the class
    assert 0.5 < same < 0.8
    with pytest.raises(ValueError, match="kind"):
        loss_accuracy.make_features(4, 2, 2, "uniform", 0)
    with pytest.raises(ValueError, match="dtypes"):
        loss_accuracy.measure(n=8, dim=2, classes=2, dtypes=("fp8",), progress=lambda s: None)


def test_emulated_cuda_kernel_is_measured_too():
    """kernel='cuda-emulation': the CUDA kernels (bf16 on the tensor-core path, H tile in bf16) on the
    CPU; fp32 still meets the contract and bf16 stays within bf16's error order."""
    res = loss_accuracy.measure(n=96, dim=16, classes=5, temperatures=(0.1,), dtypes=("fp32", "bf16"), seeds=(0,),
                                kinds=("clustered",), kernel="cuda-emulation", progress=lambda s: None)
    assert res["config"]["kernel"] == "cuda-emulation" and all(r["kernel"] == "cuda-emulation" for r in res["records"])
    fp32, bf16 = res["summary"]
    assert fp32["loss_rel_err"]["max"] < 1e-5 and fp32["grad_rel_err"]["max"] < 1e-5
    assert 0 < bf16["grad_rel_err"]["max"] < 3e-2
    with pytest.raises(ValueError, match="kernel"):
        loss_accuracy.measure(n=8, dim=2, classes=2, kernel="gpu", progress=lambda s: None)
