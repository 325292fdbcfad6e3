import sys

from evomerge.cli import main

sys.exit(main())
