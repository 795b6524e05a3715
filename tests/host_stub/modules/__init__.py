"""Stub of the WebUI's ``modules`` package (see tests/host_stub/__init__.py)."""
