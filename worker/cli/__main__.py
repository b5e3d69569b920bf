"""``python -m worker.cli``: the same entry point as the ``mpesa-b2c`` script."""

import sys

from worker.cli.main import main

sys.exit(main())
