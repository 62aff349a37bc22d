"""retriever: cross-modal search over your own photos and documents."""

__version__ = "0.1.0"
