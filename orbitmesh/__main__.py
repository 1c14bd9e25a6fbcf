import sys

from orbitmesh.cli import main

sys.exit(main())
