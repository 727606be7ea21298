"""Helpers shared by the test modules and tests/conftest.py (which holds the fixtures).

Test modules import from here, never from each other or from conftest.py. tests/__init__.py
registers this package for pytest's assertion rewriting, so asserts in these helpers report
like asserts in the tests.
"""
