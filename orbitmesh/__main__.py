import sys

from orbitmesh.run.cli import main

sys.exit(main())
