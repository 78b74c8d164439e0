"""The hub layer: AsyncHub and the sync façade, prefetch, cached documents, the Source protocol.

Depends on the engine, the cache and the sources; knows no concrete source by name."""
