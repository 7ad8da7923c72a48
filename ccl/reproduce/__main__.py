import sys

from ccl.reproduce.cli import main

sys.exit(main())
