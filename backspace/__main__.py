import sys

from backspace.cli import main

sys.exit(main())
