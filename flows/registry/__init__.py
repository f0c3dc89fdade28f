"""MLflow: tracking runs, the registry and its champion gate, comparing versions."""
