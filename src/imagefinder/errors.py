"""One error type per failure. HTTP status codes live in `api.errors`, exit codes in `cli`."""

from __future__ import annotations


class ImageFinderError(Exception):
    """Base of every error ImageFinder raises on purpose; its message is meant for a user."""


class ImageError(ImageFinderError):
    """An input that should be an image could not be used. Carries where it came from."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class CorruptImageError(ImageError):
    """The bytes claim to be an image but do not decode (truncated, damaged)."""


class UnsupportedImageError(ImageError):
    """The bytes are not an image in a format we accept (text, HTML, PDF, SVG, ...)."""


class ImageTooLargeError(ImageError):
    """The image exceeds a configured limit (bytes or pixels); the limit is in the message."""

    def __init__(self, source: str, reason: str, limit: int) -> None:
        super().__init__(source, reason)
        self.limit = limit


class EncoderMismatchError(ImageFinderError):
    """An index built by one encoder was opened with another."""


class StoreError(ImageFinderError):
    """The vector store refused an operation (a server-side store such as Milvus)."""


class SearchSpaceChangedError(StoreError):
    """Another process changed the search space while this one computed a change to it."""


class StoreUnavailableError(StoreError):
    """The vector store cannot be reached (a Milvus server down or unreachable); names the URI."""


class StoreVersionError(ImageFinderError):
    """The store on disk was written by a newer, unknown schema version."""


class InvalidFilterError(ImageFinderError):
    """A payload filter that cannot be applied (a field name that is not a plain identifier,
    a value that is not a string, number or boolean)."""


class InvalidScanError(ImageFinderError):
    """A duplicates scan asked for with a threshold outside [-1, 1], an unknown keeper rule, or
    `across` without `against`."""


class UnknownIdError(ImageFinderError):
    """An image id that the collection does not hold."""

    def __init__(self, image_id: str) -> None:
        super().__init__(f"no image with id {image_id!r} in the collection")
        self.image_id = image_id


class InvalidIdError(ImageFinderError):
    """An image id that cannot be used (empty, too long, control characters)."""


class DuplicateImageError(ImageFinderError):
    """The same bytes are already indexed under another id."""

    def __init__(self, existing_id: str) -> None:
        super().__init__(f"the same image is already indexed as {existing_id!r}")
        self.existing_id = existing_id


class TextSearchUnsupportedError(ImageFinderError):
    """A text query to an encoder that embeds only images (text needs a CLIP-family model)."""


class SourceError(ImageFinderError):
    """A collection source (folder, CSV) cannot be read at all, e.g. a CSV without a url column."""


class EngineError(ImageFinderError):
    """The distributed indexing engine (Ray) is not installed, cannot be reached, or its workers
    cannot build the driver's encoder."""


class FetchError(ImageFinderError):
    """One item of a source could not be fetched (missing file, HTTP error, timeout)."""


class ModelUnavailableError(ImageFinderError):
    """The encoder's weights or exported model cannot be found or built."""


class TrackingError(ImageFinderError):
    """The MLflow tracking store cannot be opened or written (bad URI, unreachable server)."""
