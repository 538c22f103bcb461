"""Source-agnostic retrieval: one transport, the publishing pipeline, the cache, download layouts."""
