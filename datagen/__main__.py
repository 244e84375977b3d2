import sys

from datagen.generate import main

sys.exit(main())
