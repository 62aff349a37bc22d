"""A collection on disk, the one door to storage: collection (store + vector indexes), indexer
(bringing it up to date with folders), locations (where it lives), thumbnails."""
