"""Write or check image-folder datasets.

    python tools/make_dataset.py digits data/digits              # sklearn digits, 32x32 JPEGs
    python tools/make_dataset.py synthetic data/synthetic --images 400 --classes 10
    python tools/make_dataset.py fashion-mnist data/fashion_mnist  # apt-get install dataset-fashion-mnist
    python tools/make_dataset.py check data/digits               # corrupt files, empty classes

Writers are idempotent (a manifest records a completed write). `check` exits 1 if it finds a
problem. The functions live in supcon_fast.data; this is argument parsing only.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from supcon_fast.data import check_dataset, make_digits, make_fashion_mnist, make_synthetic  # noqa: E402
from supcon_fast.data.fashion_mnist import SOURCE as FASHION_SOURCE  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("digits", help="scikit-learn digits as ROOT/{train,val}/<digit>/*.jpg")
    d.add_argument("root")
    d.add_argument("--size", type=int, default=32)
    s = sub.add_parser("synthetic", help="ImageNet-like JPEGs (~500x375) for throughput work")
    s.add_argument("root")
    s.add_argument("--images", type=int, default=500, help="training images")
    s.add_argument("--classes", type=int, default=10)
    s.add_argument("--val-images", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("fashion-mnist", help="Fashion-MNIST from its Debian package's IDX files as "
                       "ROOT/{train,val}/<class>/*.jpg (the official 60,000 / 10,000 split)")
    f.add_argument("root")
    f.add_argument("--source", default=FASHION_SOURCE, help="folder of the four IDX .gz files (read only)")
    c = sub.add_parser("check", help="report corrupt images, empty classes and stray files")
    c.add_argument("root")
    a = p.parse_args(argv)
    try:
        if a.cmd == "digits":
            print(make_digits(a.root, size=a.size))
        elif a.cmd == "fashion-mnist":
            print(make_fashion_mnist(a.root, source=a.source))
        elif a.cmd == "synthetic":
            print(make_synthetic(a.root, images=a.images, classes=a.classes,
                                 val_images=a.val_images, seed=a.seed))
        else:
            reports = check_dataset(a.root)
            for r in reports:
                print(r.format())
            return 0 if all(r.ok for r in reports) else 1
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
