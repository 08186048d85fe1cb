"""Helpers shared by the test modules (no tests here), imported as ``support.<topic>``: pytest
puts the tests directory on sys.path (pyproject's pythonpath), and bench/ does the same."""
