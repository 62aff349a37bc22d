"""`retriever serve`: the JSON API and web page, and the CLI's client for a running server."""
