"""``python -m engine.reporting``: the same as ``fsat report`` (the console runs it in a subprocess)."""

import sys

from engine.reporting.cli import main

sys.exit(main())
