"""HTTP-facing core of the embedding server: settings, schemas, input decoding, errors."""
