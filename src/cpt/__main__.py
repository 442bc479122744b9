"""`python -m cpt ...` (and `torchrun ... -m cpt run ...`) is the `cpt` command."""

import sys

from .cli import main

sys.exit(main())
