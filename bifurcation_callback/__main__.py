"""``python -m bifurcation_callback ...``: the ``bifurcation-callback`` command, for environments without the
console script on PATH (a venv that is not activated, a notebook's ``!python -m``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
