"""The platform: the CLI, Ray Train stages, Ray Tune + Optuna studies, MLflow tracking, the demo."""
