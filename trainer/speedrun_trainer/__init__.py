"""speedrun_trainer: the GPT trainer, its data and evaluation, the local CLI and the leaderboard.

Subpackages, one concept each (the API types live in `speedrun_api`):
- `data`: storage URIs, token shards, tokenizers, `data prepare`, the builtin corpus, the loader.
- `train`: the model, optimizers, the training loop and what it runs on (torch.distributed,
  the torchrun wrapper, checkpoints, telemetry, tracking), and the measurement (loss and BPB,
  CORE) that the loop and the final evaluation share.
- `evaluation`: the eval entry point, which scores the final checkpoint, and the results file.
- `cli`: the `speedrun` command, local runs (`speedrun run`), launchers and the progress bar.
- `leaderboard`: `speedrun leaderboard`: loading results, ranking, tables, the plot and page.

Subpackages that need torch (train, evaluation) are imported only by what runs them, so the
CLI's plan/render/crd commands and the operator never import torch.
"""

__version__ = "0.1.0"
