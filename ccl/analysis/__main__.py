import sys

from ccl.analysis.cli import main

sys.exit(main())
