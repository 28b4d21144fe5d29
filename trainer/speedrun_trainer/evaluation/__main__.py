"""`python -m speedrun_trainer.evaluation --config run.json` (alone or under torchrun): evaluate a trained run."""

import os
import sys

from speedrun_trainer.train.torchrun import say_phase

if os.environ.get("RANK", "0") == "0":  # before torch loads: seconds on a busy machine
    say_phase("evaluation started: importing torch")

from speedrun_trainer.evaluation.evaluate import main  # after the phase line, on purpose

sys.exit(main())
