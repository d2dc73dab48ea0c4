"""Test support: real servers and real worker processes, started by the test session."""
