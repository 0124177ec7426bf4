"""`python -m psl_keras.data`: exports a split of fixed-size images to an array dataset file (`arrays:FILE`)."""

import sys

from psl_keras.data import main

sys.exit(main())
