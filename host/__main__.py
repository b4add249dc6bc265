"""``python -m host``: the ``llmacc`` command line."""

import sys

from llmacc.cli import main

sys.exit(main())
