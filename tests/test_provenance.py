"""Results files: the atomic JSON write and the provenance every record carries."""
import json
import re

from supcon_fast.provenance import git_commit, utc_now, write_json_atomic


def test_write_json_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, [{"n": 1}])
    write_json_atomic(path, [{"n": 1}, {"n": 2}])  # a second write replaces the first in one rename
    assert json.loads(path.read_text()) == [{"n": 1}, {"n": 2}]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no .tmp left behind


def test_commit_and_date_are_recorded():
    assert re.fullmatch(r"([0-9a-f]{40}(-dirty)?|unknown)", git_commit())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", utc_now())
