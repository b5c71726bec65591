"""Augmentation policies as DALI graph fragments, applied per view after crop (and before flip
and normalization; see pipelines.py for why the flip can go last).

Every function takes one view (uint8 HWC DataNode of `size` x `size`) and returns one. Each call
creates its own operator instances, so two views of one image draw independent random parameters.
The pipelines are defined with `enable_conditionals=True`: `if` on a per-sample random predicate
splits the batch and runs the branch only on the samples that take it (that is how DALI's own
auto-augment policies apply an op with a probability, and it skips the work for the others).
"""
from __future__ import annotations

from nvidia.dali import fn, types

from .recipe import (BLUR_P, BLUR_SIGMA, GRAY_P, JITTER, WARP_MAX_ROT_DEG, WARP_MAX_SHEAR,
                     WARP_P, WARP_SCALE, blur_window, check_policy)


def _uniform(lo, hi):
    return fn.random.uniform(range=[float(lo), float(hi)])


def _coin(p):
    return fn.random.coin_flip(probability=float(p), dtype=types.BOOL)


def color_distortion(x):
    """Colour jitter (p=0.8) then grayscale (p=0.2), fused into one `fn.color_twist` per sample.

    Not applying the jitter is the identity twist (1, 1, 1, 0) and grayscale is saturation 0, so a
    per-sample blend of the random factors with the identity expresses both probabilities without
    branching. Differences from torchvision's ColorJitter: the four adjustments are applied in
    DALI's fixed order instead of a random one, and contrast pivots around mid-grey rather than the
    image mean. Hue is in degrees for DALI: torchvision's 0.1 of the hue circle is 36 degrees.
    """
    j = JITTER
    on = fn.cast(fn.random.coin_flip(probability=j["p"]), dtype=types.FLOAT)
    color = 1.0 - fn.cast(fn.random.coin_flip(probability=GRAY_P), dtype=types.FLOAT)

    def factor(amount):
        return 1.0 + on * (_uniform(1 - amount, 1 + amount) - 1.0)

    return fn.color_twist(
        x,
        brightness=factor(j["brightness"]),
        contrast=factor(j["contrast"]),
        saturation=factor(j["saturation"]) * color,
        hue=on * _uniform(-360 * j["hue"], 360 * j["hue"]),
    )


def gaussian_blur(x, size, p=BLUR_P):
    if _coin(p):
        x = fn.gaussian_blur(x, window_size=blur_window(size), sigma=_uniform(*BLUR_SIGMA))
    return x


def sparse_warp(x, size, p=WARP_P):
    """SimAugment's sparse image warp, approximated by a random near-identity affine warp.

    The paper (Khosla et al., 2020, App. on SimAugment) moves a few control points of the image by
    small random offsets and interpolates a smooth dense displacement (TensorFlow's
    `sparse_image_warp`). DALI 2.4 only has `fn.experimental.remap` (arbitrary displacement
    fields) on the GPU, and we keep one graph for CPU and GPU, so we draw the warp from the affine
    family instead: rotation of up to +-10 degrees, shear of up to 0.1 per axis and anisotropic
    scale in [0.9, 1.1], all about the image centre, applied with `fn.warp_affine` (bilinear,
    borders filled with mid-grey). This keeps the intent -- a small geometric distortion that
    preserves class -- but the distortion is global (straight lines stay straight) rather than
    locally varying.
    """
    if _coin(p):
        c = [size / 2.0, size / 2.0]
        m = fn.transforms.combine(
            fn.transforms.rotation(angle=_uniform(-WARP_MAX_ROT_DEG, WARP_MAX_ROT_DEG), center=c),
            fn.transforms.shear(shear=fn.random.uniform(range=[-WARP_MAX_SHEAR, WARP_MAX_SHEAR],
                                                        shape=[2]), center=c),
            fn.transforms.scale(scale=fn.random.uniform(range=list(WARP_SCALE), shape=[2]),
                                center=c),
        )
        x = fn.warp_affine(x, matrix=m, fill_value=128, interp_type=types.INTERP_LINEAR,
                           inverse_map=False)
    return x


def apply_policy(x, policy, size, *, randaugment_n=2, randaugment_m=9):
    """Apply `policy` to one view `x` (uint8 HWC, size x size)."""
    check_policy(policy)
    if policy == "simclr":
        x = color_distortion(x)
        x = gaussian_blur(x, size)
    elif policy == "simaugment":
        x = color_distortion(x)
        x = gaussian_blur(x, size)
        x = sparse_warp(x, size)
    elif policy == "randaugment":
        from nvidia.dali.auto_aug import rand_augment

        x = rand_augment.rand_augment(x, n=randaugment_n, m=randaugment_m, shape=[size, size])
    elif policy == "autoaugment":
        from nvidia.dali.auto_aug import auto_augment

        x = auto_augment.auto_augment_image_net(x, shape=[size, size])
    return x


def needs_conditionals(policy):
    return policy != "none"

