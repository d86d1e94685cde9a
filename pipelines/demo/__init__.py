"""The bundled demo: digits with planted duplicates, leaks and label noise, and its annotator."""
