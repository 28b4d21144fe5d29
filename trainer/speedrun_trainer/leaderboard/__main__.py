"""`python -m speedrun_trainer.leaderboard URI [...]`: the leaderboard without the rest of the CLI."""

import sys

from speedrun_trainer.leaderboard.command import main

sys.exit(main())
