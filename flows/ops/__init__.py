"""Operating the pipeline: settings and params, locks, start-up, retries, deployments, fault drills."""
