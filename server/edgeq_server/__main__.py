"""``python -m edgeq_server`` is the ``edgeq`` command."""

import sys

from .cli import main

sys.exit(main())
