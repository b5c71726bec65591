#!/usr/bin/env python
"""What a SupCon step costs against a cross-entropy step, phase by phase (supcon_fast/bench/step.py).

    python tools/profile_step.py --arch resnet50 --image-size 224 --batch-size 512 --views 2 --device cuda \
        --synthetic --amp bf16 --channels-last --contrast-n 16384 --json benchmarks/results/step_r50.json

Writes the JSON, a Markdown table (.md) and a stacked-bar PNG next to it; --trace DIR adds a
torch.profiler trace of the SupCon steps. --queue K times the SupCon step with a queue of K rows.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from supcon_fast.bench import step as profile  # noqa: E402
from supcon_fast.engine.precision import LOSS_DTYPE_CHOICES  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64, help="images per step (per GPU)")
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--synthetic", action="store_true", help="on-device synthetic images (the default without --data)")
    p.add_argument("--data", default=None, help="an image folder split: time the real DALI loader")
    p.add_argument("--amp", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--loss-dtype", default="auto", choices=list(LOSS_DTYPE_CHOICES),
                   help="SupCon loss input dtype, as the trainer's --loss-dtype (auto: the --amp dtype, else fp32)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--loss-impl", default="fused", choices=["fused", "reference"])
    p.add_argument("--contrast-n", type=int, default=None, help="contrast the local views against N views")
    p.add_argument("--queue", type=int, default=0, metavar="K",
                   help="SupCon step with a queue of K rows (full of random unit rows before timing), fed each step")
    p.add_argument("--queue-momentum", type=float, default=0.999,
                   help="with --queue: the momentum copy's m, as the trainer's (0: push the online embeddings)")
    p.add_argument("--stem", default=None, help="imagenet | small (default: small below 64 px)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--trace", default=None, help="write a torch.profiler trace of the SupCon steps here")
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    factory = None
    if a.data and not a.synthetic:
        from supcon_fast.data import build_train_loader

        def factory(batch_size, views):
            return build_train_loader(a.data, batch_size=batch_size, n_views=views, size=a.image_size, device=a.device)
    result = profile.profile(arch=a.arch, image_size=a.image_size, batch_size=a.batch_size, views=a.views,
                             steps=a.steps, warmup=a.warmup, device=a.device, amp=a.amp,
                             loss_dtype=a.loss_dtype, channels_last=a.channels_last, loss_impl=a.loss_impl,
                             contrast_n=a.contrast_n, stem=a.stem or ("small" if a.image_size < 64 else "imagenet"),
                             width=a.width, num_classes=a.num_classes, trace_dir=a.trace, loader_factory=factory,
                             queue=a.queue, queue_momentum=a.queue_momentum,
                             progress=lambda s: print(s, flush=True))
    base = os.path.splitext(a.json)[0]
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
    table = profile.markdown(result)
    with open(base + ".md", "w") as f:
        f.write(table + "\n")
    profile.plot([result], base + ".png")
    print(table)
    print(f"SupCon / CE (same images) {result['ratio_supcon_over_ce_same_images']:.3f}, "
          f"SupCon / CE (same views) {result['ratio_supcon_over_ce_same_views']:.3f}, "
          f"loss share {100 * result['loss_share']:.2f}%")
    print(f"wrote {a.json}, {base}.md, {base}.png")


if __name__ == "__main__":
    main()
