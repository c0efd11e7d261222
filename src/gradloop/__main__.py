"""``python -m gradloop`` and the ``gradloop`` console script."""

import sys

from gradloop.cli import main

if __name__ == "__main__":
    sys.exit(main())
