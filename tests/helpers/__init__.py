"""Helpers the tests share, by domain; ``tests/conftest.py`` keeps only fixtures and pytest hooks.

- ``processes``: the project's real programs in subprocesses (``run_cli``, ``worker_cmd``,
  ``env_with_project``, a read-only mount, another process holding the write lock).
- ``waiting``: waiting on a condition, never a fixed sleep (``wait_for``; ``wait_until`` under Pilot).
- ``datasets``: audio and dataset folders written by the test (WAVs, the Kaggle layout, label matrices).
- ``recording``: runs recorded through the engine's own recording code, without training (``record_run``).
- ``worlds``: whole databases a test starts from (the fixed console database, the shared inferred runs).
- ``console``: the console under Pilot (open a screen and wait for it, read tables and the screen).
"""
