"""One logging set-up for every command-line tool: this project's progress lines, not its libraries' chatter.

The exporters and quantizers we call (torch.onnx, onnxscript, onnx_ir, onnxruntime's transformer optimizer and
quantizer) log hundreds of INFO lines per run, some straight to the root logger. So the root logger only passes
warnings, and this project's own packages (plus `__main__`, the module a `python -m` command runs) pass INFO.
"""

from __future__ import annotations

import logging

OWN_LOGGERS = ("__main__", "index", "model", "training", "loadtests")


def configure_cli_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # torch logs "torchvision is not installed" as a warning on every export; nothing here needs torchvision.
    logging.getLogger("torch").setLevel(logging.ERROR)
