"""Data: table schemas and vocabularies, the seeded synthetic generator, whylogs profiles of frames."""
