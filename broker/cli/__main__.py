"""`python -m broker.cli ...` is `broker ...` (the benchmark and the man-page build use it)."""

from broker.cli.main import run

run()
