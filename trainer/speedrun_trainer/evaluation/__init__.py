"""Evaluation after training: the eval entry point (`python -m speedrun_trainer.evaluation`), which
scores the final checkpoint with the trainer's own measurement (train/loss_eval.py,
train/core_eval.py), and the results file it writes.

Importing this package imports no torch; its modules do.
"""
