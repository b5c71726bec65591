"""Images that cannot be read or decoded: the test that finds them, the messages that name them, and
the exclusion list `skip_corrupt` keeps during training.

The replacement rule, shared by the DALI and torchvision loaders: a left-out sample is replaced,
wherever the epoch order puts it, by the next sample in file order that is not left out (wrapping
around). It depends only on the list, not on when a file was found bad: a batch comes out the
same whether the file was known before the epoch or found while the batch was built (DALI redoes
it from a checkpoint, with the same augmentation draws), steps per epoch do not change on any
rank, and restoring the list (`state_dict`) reproduces the batches. In file order the neighbour is
usually of the same class, so the class balance barely moves.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

_SHOWN = 10  # files named in one message; the full list is in the loader's `skipped`
DROP_NOTE = ("drop_corrupt: dropping {path!r} ({reason}) from the features of this training split")


def decode_error(path):
    """None if PIL fully decodes `path`, else the reason ('OSError: image file is truncated').

    A full decode: a truncated file passes `Image.open` (header only) and fails in `load`. The same
    test as `check_dataset` (tools/make_dataset.py check), so the loaders and the checker agree.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # PIL raises many types for bad data
        return f"{type(e).__name__}: {e}"
    return None


def undecodable(paths):
    """{path: reason} of the paths that `decode_error` rejects, in the order given."""
    bad = {}
    for p in dict.fromkeys(paths):  # de-duplicated (padding repeats files), order kept
        reason = decode_error(p)
        if reason is not None:
            bad[p] = reason
    return bad


def name_files(bad):
    items = list(bad.items())
    shown = ", ".join(f"{p!r} ({r})" for p, r in items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _find_them(root):
    if root and os.path.isdir(root):
        return f"List every such file with `python tools/make_dataset.py check {root}`"
    return "Open each with PIL to see what is wrong"  # a file list: `check` takes folders


def train_error(bad, root):
    """The message of a training loader that is not skipping (skip_corrupt=False)."""
    return (f"image(s) that cannot be read or decoded: {name_files(bad)}. {_find_them(root)}; then "
            f"remove or replace them, or pass skip_corrupt=True (tools/train.py --skip-corrupt) "
            f"to leave such files out of training as they are found")


def eval_error(bad, root):
    """The message of the eval loader, which never skips."""
    return (f"image(s) in the evaluation set that cannot be read or decoded: {name_files(bad)}. The "
            f"evaluation set must be complete (a score over a subset is not comparable), so the "
            f"eval loader does not skip files. {_find_them(root)}; then replace or remove them")


def unattributed_error(paths, detail):
    """The pipeline failed but PIL decodes every file in flight: nothing can be named or skipped."""
    paths = list(dict.fromkeys(paths))
    return (f"the data pipeline failed on a batch of {len(paths)} files "
            f"({', '.join(map(repr, paths[:_SHOWN]))}{' ...' if len(paths) > _SHOWN else ''}), "
            f"all of which PIL decodes, so there is no file to name or skip. The pipeline "
            f"reported: {detail}")


class Exclusions:
    """The files left out so far (path -> reason, in the order found) and the replacement rule.

    `add` warns once per file; `apply(indices)` replaces left-out sample indices. `state()` /
    `load()` carry the list through a loader's state_dict (plain str, weights_only-safe).
    """

    def __init__(self, samples, root=None, *, note="skip_corrupt: leaving out {path!r} ({reason}) "
                 "from now on; the next image in file order takes its place in each batch"):
        self.samples, self.root, self.note = samples, root, note
        self.reasons = {}
        self._mask = np.zeros(len(samples), dtype=bool)

    def __len__(self):
        return len(self.reasons)

    def __contains__(self, path):
        return path in self.reasons

    @property
    def paths(self):
        return list(self.reasons)

    def add(self, bad, *, quiet=False):
        """Leave out {path: reason}; returns the number of files new to the list."""
        index = self._indices([p for p in bad if p not in self.reasons])
        new = {p: bad[p] for p in index}
        for p, r in new.items():
            self.reasons[p] = r
            self._mask[index[p]] = True
            if not quiet:
                warnings.warn(self.note.format(path=p, reason=r), stacklevel=3)
        if self._mask.all():
            raise ValueError(f"root: every image under {self.root!r} failed to read or decode "
                             f"({name_files(self.reasons)})")
        return len(new)

    def _indices(self, paths):
        """{path: sample index} of those of `paths` that are samples. No lasting path -> index
        dict (tens of MB on ImageNet): a few files are looked up one by one, many in one pass."""
        if len(paths) <= 8:
            found = {}
            for p in paths:
                try:
                    found[p] = self.samples.paths.index(p)
                except ValueError:
                    pass  # not a sample of this split (a state from another dataset)
            return found
        wanted = set(paths)
        return {p: i for i, p in enumerate(self.samples.paths) if p in wanted}

    def substitute(self, i):
        """The sample that takes the place of left-out sample `i`."""
        ok = np.flatnonzero(~self._mask)
        return int(ok[np.searchsorted(ok, i, side="right") % len(ok)])

    def apply(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        hit = np.flatnonzero(self._mask[indices]) if self.reasons else ()
        if len(hit) == 0:
            return indices
        out = indices.copy()
        for k in hit:
            out[k] = self.substitute(out[k])
        return out

    def keep(self, indices):
        """`indices` without the left-out samples (the eval loader drops, never substitutes)."""
        indices = np.asarray(indices, dtype=np.int64)
        return indices[~self._mask[indices]] if self.reasons else indices

    def state(self):
        return dict(self.reasons)

    def load(self, reasons):
        """Restore a saved list (no warnings: they were given when the files were found)."""
        self.add(dict(reasons or {}), quiet=True)
