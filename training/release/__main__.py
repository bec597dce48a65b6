"""`python -m training.release`: see training.release.cli."""

from training.release.cli import main

raise SystemExit(main())
