"""Evaluation: loss and bits-per-byte, the CORE metric, the eval entry point
(`python -m speedrun_trainer.evaluation`), and the results file.

Importing this package imports no torch; its modules do.
"""
