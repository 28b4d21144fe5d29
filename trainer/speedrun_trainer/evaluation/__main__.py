"""`python -m speedrun_trainer.evaluation --config run.json` (alone or under torchrun): evaluate a trained run."""

import sys

from speedrun_trainer.evaluation.evaluate import main

sys.exit(main())
