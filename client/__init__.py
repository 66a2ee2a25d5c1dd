"""Bulk client of the embedding server for folders: `python -m client --help`."""
