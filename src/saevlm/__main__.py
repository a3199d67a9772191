import sys

from saevlm.cli import main

sys.exit(main())
