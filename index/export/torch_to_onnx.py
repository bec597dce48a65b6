"""The one way this project turns a PyTorch module into an ONNX file (ranker, text and image encoders alike).

torch's dynamo exporter with the weights inside the file (the bundle checksums one file per graph), and with
its warnings about axis naming and deprecated internals muted: every caller checks the exported graph against
PyTorch right after, which is the check that matters.

`exporter="torchscript"` takes torch's older TorchScript exporter instead, for a graph that ONNX Runtime's
transformer optimizer will fuse: its BERT attention fusion knows the operator pattern that exporter writes for
eager attention (MatMul, scale, mask Add, Softmax, MatMul), and finds no attention in the dynamo exporter's graph.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

TORCHSCRIPT_OPSET = 17  # the TorchScript exporter's graphs for ONNX Runtime's fusions (opset 17: LayerNormalization)


def torch_to_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, Any],
    opset_version: int | None = None,
    exporter: Literal["dynamo", "torchscript"] = "dynamo",
) -> None:
    """Export `module` called on `args` to `path`; `dynamic_shapes` maps each input to {axis: torch.export.Dim}."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)  # tracing's notes on Python branches
        specific: dict[str, Any]
        if exporter == "torchscript":
            # The TorchScript exporter names its dynamic axes instead of taking Dim objects.
            axes = {name: {axis: dim.__name__ for axis, dim in dims.items()} for name, dims in dynamic_shapes.items()}
            specific = {"dynamo": False, "dynamic_axes": axes, "opset_version": opset_version or TORCHSCRIPT_OPSET}
        else:
            specific = {"dynamo": True, "dynamic_shapes": dynamic_shapes, "opset_version": opset_version}
            specific["external_data"] = False  # the weights inside the one file
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=output_names, verbose=False, **specific
        )
