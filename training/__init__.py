"""Training side: datasets, losses, the training loop, baselines and ONNX export (the core), and the tools that judge
and ship what it made: `training.evaluate` (quality of the served path, cross-validation) and `training.release`
(a new model into the running service).

Dependencies: the core (dataset, train, export, ...) never imports `service`; `evaluate` and `release` may, since
they judge the served path in process. The service never imports `training`, and nothing here imports `loadtests`.
"""
