"""opsq: distributed ops automation on Celery and Redis.

The package root imports nothing so that every layer (core, engines, the task,
producer and agent adapters, the CLI) can be imported on its own.
"""
