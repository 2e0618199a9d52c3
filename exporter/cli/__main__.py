"""`python -m exporter.cli ...` is `kiln ...` (tests and benchmark recipes start it this way)."""

from exporter.cli import main

main()
