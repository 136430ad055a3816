import sys

from distgan.cli import main

sys.exit(main())
