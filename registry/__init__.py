"""The model registry and lineage, read from ML Metadata (whichever database holds it: pipeline/metadata.py) and
the serving base path: graph.py (one pipeline's executions, artifacts and events, and a model version's record),
models.py (`make models`), lineage.py (`make lineage`). Read-only: nothing here writes."""
