"""The trainer: config, pretraining loop, linear evaluation, checkpoints, optimizers, logging.

``TrainStep`` / ``forward_loss`` (engine.step) are the real training step, reused by the profiler;
``SyntheticLoader`` (engine.memdata) is an on-device data source that costs nothing to produce.
"""
from .memdata import SyntheticLoader, TensorEvalLoader, TensorTrainLoader  # noqa: F401
from .step import TrainStep, forward_loss  # noqa: F401
