"""The trainer: config, pretraining loop, linear evaluation, checkpoints, optimizers, logging.

``TrainStep`` / ``forward_loss`` (engine.step) are the real training step, reused by the profiler.
"""
from .step import TrainStep, forward_loss  # noqa: F401
