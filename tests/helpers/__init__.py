"""Helpers the tests share: constants, builders, local servers and plugin stages (no tests, no fixtures;
the shared fixtures live in tests/conftest.py)."""
