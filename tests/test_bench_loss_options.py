"""The loss options benchmark (supcon_fast/bench/loss_options.py) on a tiny case: every case timed,
ratios against the default sets, provenance recorded."""
import json

import pytest

from supcon_fast import ops
from supcon_fast.bench import loss_options

pytestmark = pytest.mark.skipif(not ops.available(), reason="extension not built")


def test_tiny_run_writes_every_case(tmp_path):
    out = tmp_path / "r.json"
    assert loss_options.main(["--n", "64", "--dim", "8", "--rounds", "1", "--repeats", "1", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    keys = {f"{v}/{d}/cap{c}" for v in ("out", "in") for d, c in loss_options.CASES}
    assert set(rec["ms"]) == set(rec["ratio_to_default"]) == keys
    assert all(t > 0 for t in rec["ms"].values())
    assert rec["ratio_to_default"]["out/all/cap-1"] == rec["ratio_to_default"]["in/all/cap-1"] == 1.0
    assert {"commit", "date", "torch", "machine"} <= set(rec)
