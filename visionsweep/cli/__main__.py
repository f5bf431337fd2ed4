import sys

from visionsweep.cli.main import main

sys.exit(main())
