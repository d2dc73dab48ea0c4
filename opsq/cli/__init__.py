"""The ``opsq`` command line: thin adapters over producers, agents and engines."""
