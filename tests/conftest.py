"""Shared pytest configuration: the aiida-core fixtures (a temporary ``core.sqlite_dos`` profile without broker,
loaded automatically for the session; tests that do not touch AiiDA simply ignore it)."""
pytest_plugins = ['aiida.tools.pytest_fixtures']
