"""``python -m davit``: the ``davit`` command line."""
import sys

from .cli import main

sys.exit(main())
