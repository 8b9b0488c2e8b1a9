"""MLflow integration: thin adapters over the reef_forensics API (shipped as reef_forensics.plugins).

- `store`: a model-registry store plugin (`reef+sqlite://`, `reef+postgresql://`, ...) that queues
  every new model version for fingerprinting;
- `webhook`: a receiver for MLflow's `model_version.created` webhook, for servers that cannot
  load the store plugin;
- `evaluator`: `mlflow.models.evaluate(..., evaluators=["reef"])`.
"""
