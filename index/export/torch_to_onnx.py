"""The one way this project turns a PyTorch module into an ONNX file (ranker, text and image encoders alike).

torch's dynamo exporter with the weights inside the file (the bundle checksums one file per graph), and with
its warnings about axis naming and deprecated internals muted: every caller checks the exported graph against
PyTorch right after, which is the check that matters.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


def torch_to_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, Any],
    opset_version: int | None = None,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            opset_version=opset_version,
            external_data=False,
            verbose=False,
        )
