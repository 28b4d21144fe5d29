"""`python -m speedrun_trainer.train --config run.json` (under torchrun): train one SpeedrunJob."""

import sys

from speedrun_trainer.train.loop import main

sys.exit(main())
