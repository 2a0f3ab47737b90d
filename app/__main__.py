"""`python -m app` = `ragqa`."""

import sys

from app.cli import main

sys.exit(main())
