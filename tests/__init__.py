"""The test suite: fixtures in tests/conftest.py, shared helpers in tests/support/."""

import pytest

# Imported before any module of tests.support: asserts in the helpers then report like those
# in the tests.
pytest.register_assert_rewrite("tests.support")
