"""fsat-console: the Textual experiment console."""
