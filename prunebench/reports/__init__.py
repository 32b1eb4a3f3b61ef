"""Reports: Pareto fronts (and, later, the leaderboard and the HTML report)."""
