"""Training: the GPT model, AdamW/Muon, the training loop (`python -m speedrun_trainer.train`), and
what it runs on: torch.distributed set-up and exit codes, the torchrun wrapper, checkpoints,
Prometheus telemetry, W&B tracking and software versions; and the measurement the loop and the
final evaluation share: loss and BPB (loss_eval), CORE (core_eval).

Importing this package imports no torch; its modules do.
"""
