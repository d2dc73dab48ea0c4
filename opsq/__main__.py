"""``python -m opsq``: the console script, for environments without the entry point
(a zipapp, or a supervisor that starts children with the current interpreter)."""

from opsq.cli.main import main

main()
