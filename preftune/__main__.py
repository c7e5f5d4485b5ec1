"""`python -m preftune ...` (also `accelerate launch -m preftune ...`)."""
import sys

from preftune.cli import main

sys.exit(main())
