"""Storage for retriever: the SQLite metadata store (`index.store`) and FAISS vectors
(`index.vectors`)."""
