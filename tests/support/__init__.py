"""Helpers shared by the test modules (no tests here). The tests directory is on sys.path
(pytest's rootdir-relative import of conftest.py puts it there), so they import as
``support.<topic>``."""
