"""Reports you can share: one self-contained HTML file of a run, a comparison, a blend or a sweep, with its figures.

- :mod:`engine.reporting.model` is what a report is made of: sections, tables, each figure's numbers;
- :mod:`engine.reporting.data` gathers the numbers (through ``engine.compare``, ``engine.runs``,
  ``engine.curriculum`` and the ensemble job's scoring) into a :class:`~engine.reporting.data.Report`;
- :mod:`engine.reporting.confusion` counts which classes outrank a clip's true labels (numpy);
- :mod:`engine.reporting.figures` draws them with matplotlib, the only module of the project that
  imports it (an import-linter contract in ``pyproject.toml`` says so);
- :mod:`engine.reporting.html` lays out the page: inline SVG, inline style, no script, nothing fetched;
- :mod:`engine.reporting.cli` is ``fsat report`` (and ``python -m engine.reporting``);
- :mod:`engine.reporting.browser` renders a page in headless Chromium and records what it asked the
  network for (the browser test, and the screenshot in the README).

A target is a ``gather_*`` function in :mod:`engine.reporting.data` returning a ``Report``: a run,
a comparison, a blend, and a sweep (``fsat report ID --sweep``: one
:class:`~engine.reporting.model.SweepPoint` per configuration, mean ± std over its seeds, drawn by
:func:`engine.reporting.figures.sweep_points`). Nothing is imported here, so
``import engine.reporting.cli`` does not load numpy or matplotlib.
"""
