"""speedrun_trainer: the SpeedrunJob spec, FLOPs accounting, the GPT trainer and its evaluation.

Modules that need torch (model, optim, train, evaluate) are imported lazily so the operator,
which installs this package without torch, can use the spec, plan and accelerator table.
"""

__version__ = "0.1.0"
