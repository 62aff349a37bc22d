"""Ingesting: the act of indexing folders into a collection (scan, read, encode, store)."""
