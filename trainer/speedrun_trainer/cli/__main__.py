"""`python -m speedrun_trainer.cli ...`: the `speedrun` command."""

import sys

from speedrun_trainer.cli.speedrun import main

sys.exit(main())
