"""``opsq web``: the status page, the JSON API (``/api/v1/``) and badges.

An adapter over :mod:`opsq.engines.history` (reads only), like ``tasks`` is over the
engines: :mod:`.app` (middlewares, cache, auth), :mod:`.views` (routes), :mod:`.charts`
and :mod:`.badges` (inline SVG), :mod:`.server` (the process).
"""
