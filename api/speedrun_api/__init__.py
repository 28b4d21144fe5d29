"""speedrun_api: the SpeedrunJob API, the one place the operator, the CLI and the trainer import it from.

- `spec`: the pydantic models of `SpeedrunJob.spec` (the single source of truth) and their rules.
- `status`: the model of `SpeedrunJob.status`, which the operator writes.
- `manifest`: loading and validating manifests (YAML or JSON) into those models, with field-named errors.
- `accelerators`: the accelerator table (peak FLOP/s, resource names, node selectors).
- `flops`, `plan`: Marin/levanter FLOPs accounting and the resolved training plan.
- `metric_definitions`: each leaderboard's BPB and loss formulas and the results keys they go under.
- `trainer_metrics`: the trainer's Prometheus metric names and their parser (trainer <-> operator contract).
- `run_contract`: the run's file names, its `SPEEDRUN_*` environment and where its storage is.
- `crd`: the CustomResourceDefinition generated from the models (`speedrun crd [--check]`).

Nothing here imports torch or kubernetes: it installs with the operator's image and the trainer's alike.
"""

__version__ = "0.1.0"
