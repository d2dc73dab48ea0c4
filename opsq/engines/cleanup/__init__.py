"""Kubernetes cleanup engines: plain Python, no Celery.

``kube`` (the API boundary) < ``lister``/``informer`` (reading) < ``planner`` (pure
decisions) < ``executor`` (safe deletion) < ``watcher`` (informers to due times);
``rbac`` derives the least-privilege Role from the same rules.
"""
