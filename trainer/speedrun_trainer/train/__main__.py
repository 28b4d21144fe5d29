"""`python -m speedrun_trainer.train --config run.json` (under torchrun): train one SpeedrunJob."""

import os
import sys

from speedrun_trainer.train.torchrun import say_phase

if os.environ.get("RANK", "0") == "0":  # before torch loads: seconds on a busy machine
    say_phase("workers started: importing torch")

from speedrun_trainer.train.loop import main  # after the phase line, on purpose

sys.exit(main())
