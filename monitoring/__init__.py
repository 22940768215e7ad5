"""make monitor: the request log (tensorflow.serving.PredictionLog files) summarized with TFDV per time window and
model version, and compared with the training statistics of the version that served it, the previous window and
the model's scores on its evaluation data; make decay: the served version's TFMA metrics on labelled spans, kept
over time (docs/monitoring.md)."""
