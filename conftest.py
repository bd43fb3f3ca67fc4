"""Makes the repository root importable for tests (imports are absolute from it)."""
