"""`python -m peftkit ...` runs the command line (the same as the `peftkit` script)."""

from .cli import main

raise SystemExit(main())
