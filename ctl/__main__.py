"""`python -m ctl`: the same as `wondercraft-ctl`."""

import sys

from .main import main

sys.exit(main())
