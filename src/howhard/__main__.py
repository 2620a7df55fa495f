"""``python -m howhard``: the command line."""

import sys

from howhard.cli import main

sys.exit(main())
