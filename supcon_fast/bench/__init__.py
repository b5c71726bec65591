"""Benchmarks: the loss (`loss`, `loss_accuracy`), the data loaders (`data`), the training step
(`step`). Each writes JSON with machine, torch, commit and date; `tools/bench_*.py`,
`tools/loss_accuracy.py` and `tools/profile_step.py` are their command lines."""
