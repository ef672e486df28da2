"""`python -m ahop` is the `ahop` command."""

from ahop.cli import main

main()
