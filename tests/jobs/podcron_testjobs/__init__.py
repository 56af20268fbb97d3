"""Jobs for the tests, importable once ``tests/jobs`` is on the path (``PYTHONPATH`` for an
operator process): ``allowed`` is the module the tests put in ``allowedModules``, ``outside``
one they never allow."""
