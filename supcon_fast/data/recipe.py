"""The augmentation recipes as numbers, shared by the DALI graphs (policies.py) and the
torchvision baseline so both run the same recipe. No DALI import here: the package must import on
machines without DALI (GPU machines included)."""

POLICIES = ("simclr", "randaugment", "autoaugment", "simaugment", "none")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# SimCLR / SupCon reference recipe (torchvision): ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8,
# RandomGrayscale(p=0.2), GaussianBlur(kernel ~10% of the side, sigma in [0.1, 2.0]) with p=0.5.
JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8)
GRAY_P = 0.2
BLUR_P = 0.5
BLUR_SIGMA = (0.1, 2.0)
# SimAugment's warp, as a random near-identity affine map (see policies.sparse_warp).
WARP_P = 0.5
WARP_MAX_ROT_DEG = 10.0
WARP_MAX_SHEAR = 0.1
WARP_SCALE = (0.9, 1.1)
# RandAugment defaults (the SupCon paper's ImageNet setting uses n=2, m=9 style values).
RANDAUGMENT_N = 2
RANDAUGMENT_M = 9


def check_policy(policy):
    if policy not in POLICIES:
        raise ValueError(f"policy: unknown augmentation policy {policy!r}; choose one of "
                         f"{POLICIES}")


def blur_window(size):
    """torchvision recipe: odd kernel of about 10% of the image side (23 for 224, 3 for 32)."""
    k = int(0.1 * size)
    return max(3, k + 1 - k % 2)
