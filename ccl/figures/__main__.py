import sys

from ccl.figures.cli import main

sys.exit(main())
