"""`python -m sciml_bridge demo|bench`: the same as the `sciml-bridge` console script."""

import sys

from ._cli import main


if __name__ == "__main__":
    sys.exit(main())
