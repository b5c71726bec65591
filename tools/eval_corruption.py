#!/usr/bin/env python
"""Corruption robustness of a checkpoint (ImageNet-C protocol: 15 corruptions x 5 severities).

    python tools/eval_corruption.py --checkpoint runs/supcon/last.pt --baseline runs/ce/last.pt \
        --data data/digits --json benchmarks/results/corruption_digits.json

Corrupts ROOT/val once (deterministic from --seed, cached under --cache, by default under
runs/corruptions/: never inside the dataset folder), evaluates each model's top-1
error per corruption and severity, and reports CE / mCE / relative mCE against the baseline (usually a
cross-entropy model). Writes the JSON and a heatmap PNG next to it.
"""
import argparse
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from supcon_fast.robustness import corruptions as rb  # noqa: E402
from supcon_fast.provenance import git_commit, machine_info, utc_now  # noqa: E402
from supcon_fast.robustness.evaluation import Classifier, evaluate  # noqa: E402


def default_cache(data: str, seed: int) -> str:
    """A cache folder per dataset and seed, outside the dataset: its folder is never written into."""
    path = os.path.abspath(data)
    tag = hashlib.sha1(path.encode()).hexdigest()[:8]
    return os.path.join("runs", "corruptions", f"{os.path.basename(path)}-{tag}-seed{seed}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the model to evaluate (a .pt from tools/train.py)")
    p.add_argument("--baseline", default=None, help="the reference model for CE / mCE (e.g. a --loss ce run)")
    p.add_argument("--data", required=True, help="dataset root with val/<class>/ images")
    p.add_argument("--cache", default=None, help="corrupted-image cache (default: "
                   "runs/corruptions/<data folder name>-<hash of its path>-seed<seed>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corruptions", nargs="+", default=list(rb.CORRUPTIONS), choices=rb.CORRUPTIONS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    val = os.path.join(a.data, "val")
    cache = a.cache or default_cache(a.data, a.seed)
    rb.make_corrupted(val, cache, seed=a.seed, corruptions=tuple(a.corruptions))
    results = {}
    for role, path in (("model", a.checkpoint), ("baseline", a.baseline)):
        if not path:
            continue
        clf = Classifier(path, device=a.device, data=a.data)
        print(f"{role}: {path} ({clf.kind}, loss {clf.cfg['loss']})", flush=True)
        clean, errors = evaluate(clf, val, cache, corruptions=a.corruptions)
        results[role] = {"checkpoint": path, "loss": clf.cfg["loss"], "classifier": clf.kind, "clean_error": clean,
                         "errors": errors}
    m, b = results["model"], results.get("baseline")
    report = rb.summarize(m["errors"], m["clean_error"], b["errors"] if b else None, b["clean_error"] if b else None)
    out = {"model": {**m, **report}, "baseline": b, "corruptions": a.corruptions, "severities": list(rb.SEVERITIES),
           "seed": a.seed, "cache": cache, "commit": git_commit(), "machine": machine_info(a.device),
           "date": utc_now()}
    if b:
        out["baseline_report"] = rb.summarize(b["errors"], b["clean_error"], b["errors"], b["clean_error"])
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)
    base = os.path.splitext(a.json)[0]
    rb.plot_heatmap(report, base + ".png", title=f"{m['loss']} model" + (f" vs {b['loss']} baseline" if b else ""))
    if b:
        rb.plot_heatmap(out["baseline_report"], base + "_baseline.png", title=f"{b['loss']} baseline")
    summary = {"clean_error": m["clean_error"], "mean_error": report["mean_error"]}
    if b:
        summary.update(mce=report["mce"], relative_mce=report["relative_mce"], baseline_clean_error=b["clean_error"])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
