"""``python -m mtlutils.experiments``: see :mod:`mtlutils.experiments.cli`."""
import sys

from .cli import main

sys.exit(main())
