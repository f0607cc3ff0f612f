import sys

from otrobust.cli.main import main

sys.exit(main())
