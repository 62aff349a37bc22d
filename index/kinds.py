"""The two kinds of item (importable without SQLAlchemy)."""

IMAGE = "image"
TEXT = "text"
KINDS = (IMAGE, TEXT)
