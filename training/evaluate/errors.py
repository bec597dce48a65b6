"""The evaluation's one error, and how any exception becomes the one sentence a CLI prints."""

from __future__ import annotations


class EvaluateError(RuntimeError):
    """The evaluation cannot run; the message is the one sentence the CLI prints."""


def one_line(exc: BaseException) -> str:
    """An exception as one sentence: pydantic's lists of errors joined, anything else its first line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors())
        except (TypeError, KeyError):
            pass
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
