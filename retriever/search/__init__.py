"""Searching a collection: query (the one search the CLI and the server share), html_page
(`--html`), preview (inline terminal thumbnails), server (`retriever serve` and its web/ page)
and remote (the CLI's client for a running server)."""
