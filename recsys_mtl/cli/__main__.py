import sys

from recsys_mtl.cli import main

sys.exit(main())
