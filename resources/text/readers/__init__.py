"""One reader per file format, found by suffix in one registry."""
