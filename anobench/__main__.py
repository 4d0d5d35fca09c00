import sys

from anobench.cli import main

sys.exit(main())
