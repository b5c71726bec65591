"""Corruption robustness (ImageNet-C protocol): corrupted copies of a split, and the CE / mCE arithmetic.

The 15 standard corruptions x 5 severities of Hendrycks & Dietterich (2019) come from the maintained
``imagecorruptions-imaug`` distribution (imported as ``imagecorruptions``). Each corrupted image is
generated once, deterministically from ``(seed, corruption, severity, image index)``, and cached as
lossless PNG under ``cache/<corruption>/<severity>/<class>/``; a manifest makes the cache reusable.

    CE_c          = sum_s err(c, s) / sum_s err_base(c, s)
    mCE           = mean_c CE_c
    relative CE_c = sum_s (err(c, s) - err_clean) / sum_s (err_base(c, s) - err_base_clean)
    relative mCE  = mean_c relative CE_c   (over corruptions that degrade the baseline; see below)
"""
from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..data.folder import IMG_EXTENSIONS

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
MANIFEST = "manifest.json"
# relative CE needs the baseline to degrade: at least 5 error points summed over the 5 severities
MIN_DEGRADATION = 0.05
# imagecorruptions refuses images under 32 px a side (Fashion-MNIST is 28)
MIN_SIDE = 32


def list_split(root: str | os.PathLike) -> list[tuple[Path, str]]:
    """(image path, class name) of ``root/<class>/<image>``, sorted; a clear error for a missing folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data: split folder {str(root)!r} does not exist")
    items = [(p, c.name) for c in sorted(root.iterdir()) if c.is_dir()
             for p in sorted(c.iterdir()) if p.suffix.lower() in IMG_EXTENSIONS]
    if not items:
        raise ValueError(f"data: no images under {str(root)!r} (expected root/<class>/<image>)")
    return items


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """One corrupted copy of ``image`` [H, W, 3] uint8, same shape and dtype, deterministic in ``seed``."""
    from imagecorruptions import corrupt
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption: unknown {corruption!r}; choose from {CORRUPTIONS}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity: must be one of {SEVERITIES}, got {severity}")
    h, w = image.shape[:2]
    ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    if ph or pw:  # too small: corrupt an edge-padded copy and keep its centre, so no pixel is resampled
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
        out = corrupt_image(np.pad(image, pad, mode="edge"), corruption, severity, seed)
        return out[ph // 2: ph // 2 + h, pw // 2: pw // 2 + w]
    # most corruptions draw from numpy's global generator (frost picks its texture with it); the two that
    # own a generator (impulse_noise: scikit-image's; glass_blur: numba's) take the seed as an argument
    kwargs = {"seed": seed % 2**32} if corruption in ("impulse_noise", "glass_blur") else {}
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        out = corrupt(image, corruption_name=corruption, severity=severity, **kwargs)
    finally:
        np.random.set_state(state)
    out = np.asarray(out)
    if out.shape != image.shape:  # a few corruptions crop or pad odd sizes: bring it back
        from PIL import Image
        out = np.asarray(Image.fromarray(np.uint8(np.clip(out, 0, 255))).resize(image.shape[1::-1]))
    return np.uint8(np.clip(np.rint(out), 0, 255)) if out.dtype != np.uint8 else out


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    return zlib.crc32(f"{seed}/{corruption}/{severity}/{index}".encode())


def _write_one_corruption(args) -> int:
    src, cache, corruption, seed = args
    from PIL import Image
    items = list_split(src)
    for severity in SEVERITIES:
        for index, (path, cls) in enumerate(items):
            dst = Path(cache) / corruption / str(severity) / cls / (path.stem + ".png")
            if dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            img = np.asarray(Image.open(path).convert("RGB"))
            out = corrupt_image(img, corruption, severity, image_seed(seed, corruption, severity, index))
            tmp = dst.with_suffix(".tmp.png")
            Image.fromarray(out).save(tmp)
            os.replace(tmp, dst)  # a killed run never leaves a truncated image in the cache
    return len(items)


def make_corrupted(src: str, cache: str, *, seed: int = 0, corruptions=CORRUPTIONS, workers: int | None = None,
                   progress=print) -> Path:
    """Writes (once) every corruption x severity of the split ``src`` under ``cache``; returns ``cache``."""
    items = list_split(src)
    cache_p = Path(cache)
    want = {"source": str(Path(src).resolve()), "images": len(items), "seed": seed, "corruptions": list(corruptions),
            "severities": list(SEVERITIES), "format": "png"}
    manifest = cache_p / MANIFEST
    if manifest.exists():
        have = json.loads(manifest.read_text())
        if have == want:
            return cache_p
        raise ValueError(f"cache: {str(cache_p)!r} holds another set ({have}); use another --cache folder")
    cache_p.mkdir(parents=True, exist_ok=True)
    jobs = [(str(src), str(cache_p), c, seed) for c in corruptions]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    with ProcessPoolExecutor(workers) as pool:
        for c, _ in zip(corruptions, pool.map(_write_one_corruption, jobs)):
            progress(f"corrupted: {c} ({len(items)} images x {len(SEVERITIES)} severities)")
    manifest.write_text(json.dumps(want, indent=1))
    return cache_p


def corruption_errors(errors: dict, base: dict) -> dict[str, float]:
    """CE per corruption: errors[c][s] summed over severities, over the baseline's (both in [0, 1])."""
    out = {}
    for c, by_sev in errors.items():
        denom = sum(base[c][s] for s in by_sev)
        out[c] = sum(by_sev.values()) / denom if denom > 0 else float("nan")
    return out


def relative_corruption_errors(errors: dict, clean: float, base: dict, base_clean: float,
                               min_degradation: float = MIN_DEGRADATION) -> dict[str, float]:
    """Relative CE per corruption: the error increase over clean, over the baseline's increase.

    Undefined (NaN) where the baseline barely degrades (its summed increase over the severities is below
    ``min_degradation``): the ratio of two near-zero differences measures noise, not robustness; it can
    even change sign. On small images several corruptions do not hurt at all (noise averaged away by the
    resize to the training size), so this happens there.
    """
    out = {}
    for c, by_sev in errors.items():
        denom = sum(base[c][s] - base_clean for s in by_sev)
        num = sum(e - clean for e in by_sev.values())
        out[c] = num / denom if denom >= min_degradation else float("nan")
    return out


def mean(values) -> float:
    values = [v for v in values if v == v]  # NaN (an undefined ratio) is left out and reported
    return sum(values) / len(values) if values else float("nan")


def summarize(errors: dict, clean: float, base: dict | None = None, base_clean: float | None = None) -> dict:
    """The report: errors per corruption and severity, mean error, and CE / mCE / relative mCE given a baseline."""
    res = {"clean_error": clean, "errors": errors,
           "mean_error": mean(e for by in errors.values() for e in by.values())}
    if base is not None:
        ce = corruption_errors(errors, base)
        rce = relative_corruption_errors(errors, clean, base, base_clean)
        res.update({"ce": ce, "mce": mean(ce.values()), "relative_ce": rce, "relative_mce": mean(rce.values()),
                    "undefined": sorted(c for c in ce if ce[c] != ce[c]),
                    "relative_undefined": sorted(c for c in rce if rce[c] != rce[c]),
                    "min_degradation": MIN_DEGRADATION})
    return res


def plot_heatmap(report: dict, path: str, title: str = "") -> None:
    """Error (%) per corruption x severity, with CE per corruption beside it when there is a baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(report["errors"])
    grid = np.array([[100 * report["errors"][c][s] for s in SEVERITIES] for c in names])
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(names) + 1.8))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=max(100 * report["clean_error"], grid.max()))
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] < grid.max() / 2 else "black")
    labels = [f"{c}  (CE {100 * report['ce'][c]:.0f})" if "ce" in report else c for c in names]
    ax.set_yticks(range(len(names)), labels, fontsize=8)
    ax.set_xticks(range(len(SEVERITIES)), [str(s) for s in SEVERITIES])
    ax.set_xlabel("severity")
    sub = f"clean error {100 * report['clean_error']:.1f}%"
    if "mce" in report:
        sub += f", mCE {100 * report['mce']:.1f}, relative mCE {100 * report['relative_mce']:.1f}"
    ax.set_title(f"{title}\n{sub}" if title else sub, fontsize=9)
    fig.colorbar(im, ax=ax, label="top-1 error (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
