"""HTTP-facing core of the embedding server: settings, schemas, input decoding, errors."""

__version__ = "1.0.0"
"""This server's version, as GET /info reports it."""
