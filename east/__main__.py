"""``python -m east``: the same as the ``east`` command (used by the workflow rules)."""

import sys

from east.cli import main

sys.exit(main())
