"""Helpers shared by the tests (fixtures stay in tests/conftest.py):

- :mod:`support.suites`: small suites completed with explicit values, params.yaml writing;
- :mod:`support.repo`: temporary git + DVC copies of the project and running commands in them;
- :mod:`support.synthetic_results`: synthetic result files for the aggregation and report;
- :mod:`support.parity`: robust accuracy against pyautoattack's APGD-CE (parity tests).
"""
