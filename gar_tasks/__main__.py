"""``python -m gar_tasks`` is the ``gar`` command."""

import sys

from .cli import main

sys.exit(main())
