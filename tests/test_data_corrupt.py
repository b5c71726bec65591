"""The exclusion list and replacement rule of skip_corrupt, and the messages naming bad files
(pure Python + PIL; the loaders that use them are tested in test_data_loaders / _fallback)."""
import os

import numpy as np
import pytest
from data_fixtures import BAD_KINDS, write_bad, write_tiny, write_unusual

from supcon_fast.data import check_dataset, corrupt, folder


def _samples(n):
    return folder.Samples([f"/d/c/{i}.jpg" for i in range(n)], np.zeros(n, np.int64), ["c"], "/d")


def test_replacement_is_the_next_image_in_file_order_wrapping():
    ex = corrupt.Exclusions(_samples(6), "/d")
    idx = np.array([5, 2, 3, 0, 1, 4])
    assert np.array_equal(ex.apply(idx), idx)  # nothing left out: unchanged
    with pytest.warns(UserWarning, match=r"leaving out '/d/c/2.jpg' \(empty file\)"):
        assert ex.add({"/d/c/2.jpg": "empty file"}) == 1
    with pytest.warns(UserWarning, match="5.jpg"):
        ex.add({"/d/c/5.jpg": "x", "/d/c/2.jpg": "again", "/elsewhere.jpg": "not a sample"})
    assert ex.paths == ["/d/c/2.jpg", "/d/c/5.jpg"] and ex.reasons["/d/c/2.jpg"] == "empty file"
    # 2 -> 3, 5 wraps to 0; the other positions keep their sample (steps and order unchanged)
    assert ex.apply(idx).tolist() == [0, 3, 3, 0, 1, 4]
    assert ex.keep(idx).tolist() == [3, 0, 1, 4]
    again = corrupt.Exclusions(_samples(6), "/d")
    again.load(ex.state())  # restored from a state_dict: same replacements, no new warnings
    assert np.array_equal(again.apply(idx), ex.apply(idx))
    many = corrupt.Exclusions(_samples(20), "/d")  # a long list is looked up in one pass
    many.load({f"/d/c/{i}.jpg": "x" for i in range(0, 20, 2)})
    assert len(many) == 10 and many.apply(np.arange(4)).tolist() == [1, 1, 3, 3]


def test_leaving_out_every_image_is_an_error_naming_the_root():
    ex = corrupt.Exclusions(_samples(2), "/d")
    with pytest.raises(ValueError, match="root: every image under '/d'"):
        ex.add({"/d/c/0.jpg": "x", "/d/c/1.jpg": "y"}, quiet=True)


def test_messages_say_what_helps_and_never_advice_already_taken(tmp_path):
    bad = {str(tmp_path / "c" / "x.jpg"): "empty file"}
    msg = corrupt.train_error(bad, str(tmp_path))
    assert "x.jpg" in msg and "empty file" in msg
    assert f"make_dataset.py check {tmp_path}" in msg and "remove" in msg
    assert "skip_corrupt=True" in msg
    ev = corrupt.eval_error(bad, str(tmp_path))
    assert "x.jpg" in ev and "must be complete" in ev and "skip_corrupt" not in ev
    assert "make_dataset.py check" in ev
    lst = tmp_path / "list.txt"
    lst.write_text("")
    assert "make_dataset.py" not in corrupt.train_error(bad, str(lst))  # `check` takes folders
    many = {f"/d/{i}.jpg": "x" for i in range(13)}
    assert "and 3 more" in corrupt.train_error(many, "/d")


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_loaders_and_checker_agree_on_bad_files(tmp_path, kind):
    root = write_tiny(tmp_path / "d", n=3)
    p = write_bad(os.path.join(root, "cls0", "zz.jpg"), kind,
                  like=os.path.join(root, "cls0", "img_000.jpg"))
    assert corrupt.decode_error(p) is not None
    (rep,) = check_dataset(root)
    assert [c[0] for c in rep.corrupt] == [p] and rep.corrupt[0][1] == corrupt.decode_error(p)
    assert (p in folder.find_bad_headers([p])) == (kind != "truncated")  # header-intact passes


def test_unusual_valid_images_are_not_corrupt(tmp_path):
    paths = write_unusual(tmp_path)
    assert corrupt.undecodable(paths) == {}
    assert folder.find_bad_headers(paths) == {}
