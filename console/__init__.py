"""`make console`: a read-only web page over the pipeline's runs (the DAG with each component's state and time, the
artifacts and reports), the registry and model cards, lineage, serving and rollouts, monitoring windows, and the
metrics of every evaluation over time (docs/console.md)."""
