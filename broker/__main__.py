"""`python -m broker ...` is `broker ...`."""

from broker.cli.main import run

run()
