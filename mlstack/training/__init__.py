"""Training: the model input contract, point-in-time datasets, evaluation, the gate, the MLflow registry."""
