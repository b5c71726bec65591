"""The default job (`python tools/train.py`, the demo preset): a short run of the same command here; the
whole job, with its >= 97% linear top-1 target, is marked slow (about 10 minutes on 2 CPU cores)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _train(*argv, timeout):
    r = subprocess.run([sys.executable, "tools/train.py", *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_default_job_short(tmp_path):
    """The default preset end to end on the real DALI pipeline and digits folder, cut to 3 steps."""
    res = _train("--out", str(tmp_path), "--max-steps", "3", "--linear-epochs", "1", timeout=600)
    assert res["data_backend"] == "dali" and res["steps"] == 3 and res["out"] == str(tmp_path)
    assert res["n_train"] == 1437 and res["n_val"] == 360          # digits: 1797 images, 20% val
    assert (res["dataset"], res["train_images"], res["val_images"]) == ("digits", 1437, 360)
    assert res["data_root"] == str(ROOT / "data" / "digits")
    assert 10 < res["linear_top1"] <= res["linear_top5"] <= 100
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "config.yaml").is_file()


@pytest.mark.slow
def test_default_job_full(tmp_path):
    res = _train("--out", str(tmp_path), timeout=1800)
    assert res["linear_top1"] >= 97.0, res
    assert res["wall_s"] <= 900, res
