"""A checkpoint evaluated on a corrupted copy of its val split: the classifier is the run's own, errors are
in [0, 1], the linear head saved by the run is reused, and the tool writes its report."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("imagecorruptions")
from supcon_fast.robustness import corruptions as rb  # noqa: E402
from supcon_fast.engine import config  # noqa: E402
from supcon_fast.robustness.evaluation import Classifier, evaluate, top1_error  # noqa: E402
from supcon_fast.engine.run import run  # noqa: E402
from data_fixtures import make_tiny_folder, tiny_argv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("corr")
    data = make_tiny_folder(base / "data", size=32)  # imagecorruptions needs >= 32 px
    out = {}
    for loss in ("supcon", "ce"):
        res = run(config.resolve(tiny_argv(data, base / loss, loss=loss, max_steps=2)))
        assert res["status"] == "done"
        out[loss] = base / loss / "last.pt"
        out[loss + "_top1"] = res["ce_top1"] if loss == "ce" else res["linear_top1"]
    return data, out


def test_linear_head_saved_and_reused(runs):
    data, ckpts = runs
    assert (ckpts["supcon"].parent / "linear_head.pt").exists()
    clf = Classifier(str(ckpts["supcon"]), data=str(data), log=lambda s: pytest.fail("head should be reused"))
    assert "linear head" in clf.kind
    err = top1_error(clf, str(data / "val"))
    assert 100 * (1 - err) == pytest.approx(ckpts["supcon_top1"], abs=1e-3)  # the run's own number
    ce = Classifier(str(ckpts["ce"]), data=str(data))
    assert "own classifier" in ce.kind
    assert 100 * (1 - top1_error(ce, str(data / "val"))) == pytest.approx(ckpts["ce_top1"], abs=1e-3)


def test_evaluate_on_a_small_corrupted_cache(runs, tmp_path):
    data, ckpts = runs
    cache = rb.make_corrupted(str(data / "val"), str(tmp_path / "c"), corruptions=("fog", "gaussian_noise"),
                              workers=1, progress=lambda s: None)
    clf = Classifier(str(ckpts["supcon"]), data=str(data))
    clean, errors = evaluate(clf, str(data / "val"), str(cache), corruptions=("fog", "gaussian_noise"),
                             log=lambda s: None)
    assert set(errors) == {"fog", "gaussian_noise"} and all(set(e) == set(rb.SEVERITIES) for e in errors.values())
    assert all(0 <= v <= 1 for e in errors.values() for v in e.values())


def test_tool_writes_report_and_heatmaps(runs, tmp_path):
    data, ckpts = runs
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "eval_corruption.py"), "--checkpoint",
                           str(ckpts["supcon"]), "--baseline", str(ckpts["ce"]), "--data", str(data), "--cache",
                           str(tmp_path / "cache"), "--corruptions", "contrast", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert set(rep["model"]["ce"]) == {"contrast"} and "mce" in rep["model"] and rep["baseline"]["loss"] == "ce"
    assert (tmp_path / "r.png").exists() and (tmp_path / "r_baseline.png").exists()
    assert json.loads(proc.stdout.strip().splitlines()[-1])["clean_error"] == rep["model"]["clean_error"]
