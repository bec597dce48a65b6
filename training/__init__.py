"""Training side: datasets, losses, the training loop, evaluation, baselines and ONNX export."""
