"""`python -m webapp.devstack`: what `make run` runs."""

import sys

from webapp.devstack.launcher import main

sys.exit(main())
