"""`python -m cptkit ...` (and `torchrun ... -m cptkit run ...`) is the `cpt` command."""

import sys

from .cli import main

sys.exit(main())
