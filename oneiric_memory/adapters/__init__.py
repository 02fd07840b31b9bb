"""The adapters: the pgvector store, the embedders and the Session-Buddy insight sink (one package each)."""
