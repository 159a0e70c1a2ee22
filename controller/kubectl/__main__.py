"""``python -m controller.kubectl``: the same as the ``kubectl-steward`` console script."""

import sys

from controller.kubectl.main import main

sys.exit(main())
