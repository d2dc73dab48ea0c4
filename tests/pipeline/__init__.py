"""Probe pipeline tests: results store, rate limit, CLI, real workers."""
