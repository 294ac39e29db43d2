"""``python -m deploy.seed``: generate (and optionally load) the demo city."""

from deploy.seed.cli import main

main()
