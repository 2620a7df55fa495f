"""``python -m howhard.cli``: the same as ``howhard``."""

from howhard.cli import main

raise SystemExit(main())
