"""`python -m preftune ...` (also `accelerate launch -m preftune ...`)."""
import sys

from .cli import main

sys.exit(main())
