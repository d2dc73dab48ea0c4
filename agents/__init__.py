"""Node-local log agent and the stream shipper (plain Python, no Celery)."""
