"""Search spaces: one YAML file per method, and the loader that turns them into Tune spaces."""
