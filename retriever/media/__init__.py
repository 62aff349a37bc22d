"""Media on disk: finding files (scan), opening one image (images), reading and cutting text
(passages)."""
