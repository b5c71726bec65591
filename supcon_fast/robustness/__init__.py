"""Corruption robustness: the 15 x 5 corrupted copies of an eval split (`corruptions`) and the
evaluation of trained models on them (`evaluation`); `tools/eval_corruption.py` is the command line."""
