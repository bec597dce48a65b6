"""The user data format, defined once: typed records, one reader per file kind, and the validator (docs/data.md)."""
