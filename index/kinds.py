"""The kinds of item (importable without SQLAlchemy). Each kind has its own vector index."""

IMAGE = "image"
TEXT = "text"
VIDEO = "video"  # a frame of a video at a moment (items.time, seconds; migration 6)
IMAGE_TEXT = "image-text"  # words read in an image by OCR (`index --ocr`), item of that image
KINDS = (IMAGE, TEXT, VIDEO, IMAGE_TEXT)
