"""The Fashion-MNIST comparison reads what the runs recorded: the last summary, wall time summed over
invocations (a crashed one counted to its last record), unfinished runs left out."""
import json

import pytest

from supcon_fast.bench import fashion_mnist as fm


def write_run(folder, invocations):
    folder.mkdir(parents=True)
    lines = []
    for t0, t_last, summary in invocations:
        lines.append({"kind": "run", "step": 0, "time": t0})
        lines.append({"kind": "train", "step": 10, "time": t_last})
        if summary is not None:
            lines.append({"kind": "summary", "step": 20, "time": t_last, **summary})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_collect_table_and_chart(tmp_path):
    done = {"linear_top1": 91.5, "holdout_top1": 92.0, "best_epoch": 12, "wall_s": 2400.0}
    write_run(tmp_path / "supcon-s0", [(0, 100, {**done, "wall_s": 2400.0})])
    write_run(tmp_path / "supcon-s1", [(0, 1000, None), (2000, 3000, {**done, "linear_top1": 91.7, "wall_s": 1000.0})])
    write_run(tmp_path / "ce-s0", [(0, 100, {**done, "linear_top1": 92.1, "ce_top1": 91.8})])
    write_run(tmp_path / "simclr-s0", [(0, 100, None)])             # still running: left out
    (tmp_path / "notes").mkdir()
    table = fm.collect(tmp_path)
    assert set(table) == {"supcon", "ce"}
    s1 = table["supcon"]["runs"][1]
    assert s1["wall_s"] == 2000.0 and s1["invocations"] == 2           # 1000 s crashed + 1000 s resumed
    assert table["supcon"]["mean"]["linear_top1"] == pytest.approx(91.6)
    assert table["ce"]["mean"]["ce_top1"] == 91.8 and "ce_top1" not in table["supcon"]["mean"]
    md = fm.markdown(table)
    assert "| supcon | 91.60 | s0: 91.50, s1: 91.70 |" in md and "| ce | 92.10 |" in md
    fm.plot(table, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 1000
