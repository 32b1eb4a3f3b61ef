"""The platform: the command line (and, later, Ray Train/Tune and MLflow tracking)."""
