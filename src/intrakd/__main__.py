import sys

from intrakd.cli import main

sys.exit(main())
