import sys

from portway.cli.main import main

sys.exit(main())
