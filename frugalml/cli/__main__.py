"""``python -m frugalml.cli``."""

from frugalml.cli import main

main()
