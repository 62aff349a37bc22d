"""Presentation: result tables, HTML pages, terminal previews (what the CLI prints or writes)."""
