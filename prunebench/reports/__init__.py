"""Reports from MLflow: the leaderboard, Pareto fronts and hypervolumes, figures, the HTML report."""
