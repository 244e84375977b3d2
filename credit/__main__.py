import sys

from credit.commands import main

sys.exit(main())
