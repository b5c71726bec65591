"""DALI graphs: one definition for CPU (`device_id=None`, CPU operators) and GPU (`mixed` decode,
GPU operators follow the data).

Encoded bytes and labels come in through `fn.external_source` from `loaders.FileSource`, which
decides the order (our own seeded shuffle and sharding). DALI's file reader would shuffle with a
fixed internal seed and pad shards its own way; feeding the files ourselves makes the epoch order a
pure function of (seed, epoch), lets resume address any batch, and costs one `np.fromfile` per image
on the Python thread, which is small next to decoding.
"""
from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from .policies import apply_policy, needs_conditionals
from .recipe import IMAGENET_MEAN, IMAGENET_STD

_MEAN255 = [255.0 * m for m in IMAGENET_MEAN]
_STD255 = [255.0 * s for s in IMAGENET_STD]


def _decode(jpegs, device):
    # "mixed": Huffman decoding on the CPU, the rest on the GPU (nvJPEG); output lives on the GPU
    # and every operator after it runs there.
    return fn.decoders.image(jpegs, device="mixed" if device == "gpu" else "cpu",
                             output_type=types.RGB)


def _normalize(x, dtype, mirror=None, crop=None):
    # HWC output on purpose: a [B, H, W, 3] buffer viewed as [B, 3, H, W] via permute *is* the
    # channels-last layout, so the trainer gets channels-last tensors with no extra copy.
    kw = {} if crop is None else {"crop": crop}
    if mirror is not None:
        kw["mirror"] = mirror
    return fn.crop_mirror_normalize(x, dtype=dtype, output_layout="HWC", mean=_MEAN255,
                                    std=_STD255, **kw)


def build_train_pipeline(source, *, batch_size, n_views, size, policy, device, device_id, seed,
                         num_threads, scale, ratio, dali_dtype, checkpointing=True,
                         prefetch_queue_depth=2, policy_kwargs=None, checkpoint=None):
    """Pipeline with outputs (view_0, ..., view_{n-1}, labels); views uint8->normalized HWC."""
    policy_kwargs = policy_kwargs or {}

    @pipeline_def(enable_conditionals=needs_conditionals(policy))
    def train():
        jpegs, labels = fn.external_source(source=source, num_outputs=2, batch=True,
                                           batch_info=True, dtype=[types.UINT8, types.INT64])
        images = _decode(jpegs, device)  # decoded once, shared by all views
        views = []
        for _ in range(n_views):
            # Each view gets its own operator instances, hence independent random draws.
            x = fn.random_resized_crop(images, size=[size, size], random_area=list(scale),
                                       random_aspect_ratio=list(ratio),
                                       interp_type=types.INTERP_LINEAR, antialias=True)
            x = apply_policy(x, policy, size, **policy_kwargs)
            # The horizontal flip is applied last, fused into normalization. The policies are
            # invariant in distribution under a horizontal reflection (colour ops are pointwise,
            # blur is symmetric, the random geometric ops draw symmetric parameters), so flipping
            # after them gives the same distribution as flipping right after the crop.
            views.append(_normalize(x, dali_dtype, mirror=fn.random.coin_flip(probability=0.5)))
        return (*views, labels)

    return train(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                 enable_checkpointing=checkpointing, checkpoint=checkpoint,
                 prefetch_queue_depth=prefetch_queue_depth)


def build_eval_pipeline(source, *, batch_size, size, resize, device, device_id, num_threads,
                        dali_dtype, prefetch_queue_depth=2):
    """Resize the shorter side to `resize`, centre crop `size`, normalize."""

    @pipeline_def
    def evaluate():
        jpegs, labels = fn.external_source(source=source, num_outputs=2, batch=True,
                                           batch_info=True, dtype=[types.UINT8, types.INT64])
        images = _decode(jpegs, device)
        images = fn.resize(images, resize_shorter=float(resize), interp_type=types.INTERP_LINEAR,
                           antialias=True)
        # crop_pos defaults to the centre
        return _normalize(images, dali_dtype, crop=[size, size]), labels

    return evaluate(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=0,
                    prefetch_queue_depth=prefetch_queue_depth)
