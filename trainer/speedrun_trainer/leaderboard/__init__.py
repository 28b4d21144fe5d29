"""`speedrun leaderboard`: load speedrun_results.json files (ours and Marin's), rank them into
tracks, and show them as tables, JSON, a PNG and an HTML page."""
