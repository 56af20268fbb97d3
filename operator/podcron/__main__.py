"""``python -m podcron`` is the ``podcron`` command."""

import sys

from podcron.cli import main

sys.exit(main())
