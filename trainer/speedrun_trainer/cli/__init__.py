"""The `speedrun` command line: plan and run manifests locally (torchrun or torchx launchers),
with a progress bar that scrapes the trainer's metrics."""
