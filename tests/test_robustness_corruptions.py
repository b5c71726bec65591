"""Corruptions are deterministic and keep shape/dtype; the CE / mCE arithmetic on a hand-computed table."""
import json

import numpy as np
import pytest

pytest.importorskip("imagecorruptions")
from supcon_fast.robustness import corruptions as rb  # noqa: E402


def _image(seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("corruption", rb.CORRUPTIONS)
def test_every_corruption_is_deterministic_and_keeps_shape(corruption):
    img = _image()
    a = rb.corrupt_image(img, corruption, 3, seed=11)
    b = rb.corrupt_image(img, corruption, 3, seed=11)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    state = np.random.get_state()[1].copy()
    rb.corrupt_image(img, corruption, 5, seed=12)
    assert np.array_equal(np.random.get_state()[1], state)  # the global generator is left as it was


def test_noise_differs_across_seeds_and_severities():
    img = _image()
    a = rb.corrupt_image(img, "gaussian_noise", 1, seed=1)
    assert not np.array_equal(a, rb.corrupt_image(img, "gaussian_noise", 1, seed=2))
    assert np.abs(rb.corrupt_image(img, "gaussian_noise", 5, seed=1).astype(int) - img).mean() > \
        np.abs(a.astype(int) - img).mean()


def test_bad_corruption_names_the_argument():
    with pytest.raises(ValueError, match="corruption"):
        rb.corrupt_image(_image(), "rain", 1, 0)
    with pytest.raises(ValueError, match="severity"):
        rb.corrupt_image(_image(), "fog", 6, 0)


def test_mce_arithmetic_by_hand():
    # two corruptions, severities 1..5; model errors and baseline errors in [0, 1]
    err = {"fog": dict(zip(rb.SEVERITIES, [0.1, 0.2, 0.3, 0.4, 0.5])),
           "snow": dict(zip(rb.SEVERITIES, [0.2, 0.2, 0.2, 0.2, 0.2]))}
    base = {"fog": dict(zip(rb.SEVERITIES, [0.2, 0.4, 0.6, 0.8, 1.0])),
            "snow": dict(zip(rb.SEVERITIES, [0.1, 0.1, 0.1, 0.1, 0.1]))}
    rep = rb.summarize(err, 0.05, base, 0.05)
    # CE_fog = 1.5 / 3.0 = 0.5; CE_snow = 1.0 / 0.5 = 2.0; mCE = 1.25
    assert rep["ce"] == pytest.approx({"fog": 0.5, "snow": 2.0})
    assert rep["mce"] == pytest.approx(1.25)
    # relative: fog (1.5 - 0.25) / (3.0 - 0.25) = 1.25 / 2.75; snow (1.0 - 0.25) / (0.5 - 0.25) = 3.0
    assert rep["relative_ce"]["fog"] == pytest.approx(1.25 / 2.75)
    assert rep["relative_mce"] == pytest.approx((1.25 / 2.75 + 3.0) / 2)
    assert rep["mean_error"] == pytest.approx((1.5 + 1.0) / 10)
    # a baseline with no error on a corruption: CE undefined, named, left out of the mean
    base0 = {**base, "snow": dict.fromkeys(rb.SEVERITIES, 0.0)}
    rep0 = rb.summarize(err, 0.05, base0, 0.0)
    assert rep0["undefined"] == ["snow"] and rep0["mce"] == pytest.approx(0.5)
    # a baseline that barely degrades (0.5 - 0.5 + ... < 0.05 summed): relative CE undefined, left out
    flat = {**base, "snow": dict.fromkeys(rb.SEVERITIES, 0.055)}
    rep1 = rb.summarize(err, 0.05, flat, 0.05)
    assert rep1["relative_undefined"] == ["snow"] and rep1["relative_mce"] == pytest.approx(1.25 / 2.75)
    assert rep1["ce"]["snow"] == pytest.approx(1.0 / 0.275)


def test_cache_is_written_once_and_deterministic(tmp_path):
    from PIL import Image
    src = tmp_path / "val"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_image(seed=i + 10 * len(cls), size=32)).save(src / cls / f"{i}.png")
    cache = rb.make_corrupted(str(src), str(tmp_path / "c"), seed=3, corruptions=("fog", "pixelate"), workers=1,
                              progress=lambda s: None)
    files = sorted(p for p in cache.rglob("*.png"))
    assert len(files) == 2 * 5 * 4
    snapshot = {p: p.read_bytes() for p in files}
    assert json.loads((cache / rb.MANIFEST).read_text())["seed"] == 3
    rb.make_corrupted(str(src), str(tmp_path / "c"), seed=3, corruptions=("fog", "pixelate"), workers=1)
    assert {p: p.read_bytes() for p in files} == snapshot
    again = rb.make_corrupted(str(src), str(tmp_path / "d"), seed=3, corruptions=("fog", "pixelate"), workers=1,
                              progress=lambda s: None)
    assert (again / "fog/4/a/0.png").read_bytes() == (cache / "fog/4/a/0.png").read_bytes()
    with pytest.raises(ValueError, match="cache"):
        rb.make_corrupted(str(src), str(tmp_path / "c"), seed=4, corruptions=("fog", "pixelate"), workers=1)
    with pytest.raises(FileNotFoundError, match="data"):
        rb.list_split(tmp_path / "missing")


def test_heatmap(tmp_path):
    err = {c: dict(zip(rb.SEVERITIES, [0.1 * s for s in rb.SEVERITIES])) for c in rb.CORRUPTIONS}
    rep = rb.summarize(err, 0.02, err, 0.02)
    rb.plot_heatmap(rep, str(tmp_path / "h.png"), title="test")
    assert (tmp_path / "h.png").stat().st_size > 1000
