"""Source-agnostic retrieval: the transport, the publishing pipeline, the cache, layouts."""
