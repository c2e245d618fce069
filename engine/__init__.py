"""fsat-console engine: data, features, models, training, jobs and the SQLite store."""

__version__ = "0.1.0"
