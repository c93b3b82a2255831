"""Vector stores behind one contract (`VectorStore`)."""

from imagefinder.stores.base import Hit, Payload, VectorStore
from imagefinder.stores.embedded import EmbeddedStore

__all__ = ["EmbeddedStore", "Hit", "Payload", "VectorStore"]
