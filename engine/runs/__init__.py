"""The run layer: a run's folder and files, its recorded scores, ensemble members, and reports.

numpy and stdlib only (plus ``engine.store``, ``engine.metrics``,
``engine.ensemble``, ``engine.specs``, ``engine.data.labels``): the console
imports it, and an import-linter contract (``pyproject.toml``) keeps torch,
librosa, sklearn and soundfile out. Every job, the CLI and the console save,
score and read runs through here:

- :mod:`engine.runs.folder`: :class:`~engine.runs.folder.RunFolder`, the paths of a run's artifacts
  (written and read through :mod:`engine.atomic`, the one atomic writer, which sits below this layer);
- :mod:`engine.runs.scores`: recording fold, out-of-fold and test scores;
- :mod:`engine.runs.recorder`: the fold seam's reporting interface;
- :mod:`engine.runs.members`: ensemble members, their checks, CV weights and the console's blend bench;
- :mod:`engine.runs.reports`: the TTA gain;
- :mod:`engine.runs.kinds`: a run's architecture and model label.

Submodules are imported where they are used (nothing is imported here), so a
console screen that only needs :mod:`engine.runs.kinds` does not load numpy.
"""
