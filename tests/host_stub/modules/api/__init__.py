"""Stub of modules/api (see tests/host_stub/__init__.py)."""
