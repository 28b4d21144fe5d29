"""`speedrun leaderboard`: load runs' results files (ours and Marin's), rank them into
tracks, and show them as tables, JSON, a PNG and an HTML page."""
