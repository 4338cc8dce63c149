import sys

from longshort.cli import main

sys.exit(main())
