"""`python -m loadtests.bench` (`make bench`): see loadtests.bench.compare."""

import sys

from loadtests.bench.compare import main

sys.exit(main())
