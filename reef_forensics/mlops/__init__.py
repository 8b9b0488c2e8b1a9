"""Running beside an MLflow registry: configuration, the job queue, the worker that
fingerprints and screens each registered version, the fleet, reconciliation and metrics."""
