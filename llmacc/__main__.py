import sys

from llmacc.cli import main

sys.exit(main())
