"""Where the checkout is: the one definition of the repository root.

The tools that run from a checkout (the release CLI, the load tests and benchmarks, the tests) default to its
data/, artifacts/ and reports/ and start processes in it, whatever the working directory. The service never uses
this: it reads every path from its settings.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
