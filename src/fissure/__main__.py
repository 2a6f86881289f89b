"""``python -m fissure`` is the ``fissure`` command."""

import sys

from fissure.cli import main

sys.exit(main())
