"""Entry point of `python -m spatialsam`."""

import sys

from .cli import main

sys.exit(main())
