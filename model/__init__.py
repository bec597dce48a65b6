"""The fusion ranker and its feature schema.

`model.schema` is pure numpy and safe to import from the service; `model.fusion` needs torch and is imported only
by training and export.
"""
