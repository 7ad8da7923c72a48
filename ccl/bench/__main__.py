import sys

from ccl.bench.cli import main

sys.exit(main())
