"""``python -m opsq``: the console script, for environments without the entry point
(a zipapp, or a supervisor that starts children with the current interpreter).

``main()`` returns the exit code of a command that ends with ``ctx.exit(code)`` (click's
``standalone_mode=False``); the console script passes it to ``sys.exit``, and so must
this, or `python -m opsq cleanup` reports failures with exit 0.
"""

from opsq.cli.main import main

raise SystemExit(main())
