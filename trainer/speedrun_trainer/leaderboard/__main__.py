"""`python -m speedrun_trainer.leaderboard URI [...]`: the leaderboard without the rest of the CLI."""

import sys

from speedrun_trainer.leaderboard.leaderboard_command import main

sys.exit(main())
