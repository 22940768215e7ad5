"""The model registry and lineage, read from ML Metadata (whichever database holds it: pipeline/metadata.py) and
the serving base path: graph.py (one pipeline's executions, artifacts and events, and a model version's record),
models.py (`make models`), lineage.py (`make lineage`), both read-only; model_card.py, which writes the model card
of a pushed version (after a run, or `make model-card`) beside the serving base path."""
