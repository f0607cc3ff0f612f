import sys

from otrobust.cli import main

sys.exit(main())
