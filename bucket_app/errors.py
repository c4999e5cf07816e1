"""The exception family of bucket_app.

Every error we raise on purpose derives from :class:`BucketAppError`, so callers
catch one family: the agent catches :class:`BadInput` subclasses per message, start-up
catches :class:`SettingsError`, and the web layer turns :class:`HttpError` into one
JSON shape.
"""

from __future__ import annotations


class BucketAppError(Exception):
    """Root of every error bucket_app raises on purpose."""


class SettingsError(BucketAppError):
    """A bad settings file, key or value; the message is one line naming all three."""


class KafkaUnavailable(BucketAppError):
    """The brokers could not be reached at start-up (within ``startup_timeout``)."""


class KafkaAuthError(BucketAppError):
    """A broker answered but refused this client: credentials, certificates or protocol.
    The message names the settings key to fix; waiting would not help."""


class RegistryError(BucketAppError):
    """The schema registry gave an answer we cannot use (an unexpected status or body)."""


class RegistryUnavailable(RegistryError):
    """The schema registry could not be reached, timed out or answered 5xx: worth retrying."""


class RegistryRefused(RegistryError):
    """The schema registry refused this client: credentials or certificates. The message names
    the settings key to fix; waiting would not help."""


class TopicError(BucketAppError):
    """A topic bucket_app needs is wrong or cannot be created; the message names it."""


class IncompatibleLibrary(BucketAppError):
    """An installed faust-streaming or aiokafka is not the version bucket_app is pinned to, or
    lacks a private name :mod:`bucket_app.seam` bends; the message names what differs."""


class MissingCodec(BucketAppError):
    """A compression codec Kafka defines cannot be read with what is installed; the message
    names it."""


class InvalidValue(BucketAppError, ValueError):
    """A settings value that fails its check; the settings loader adds file, key and value."""


class BrokersUnreachable(BucketAppError):
    """One start-up attempt found no broker to talk to; the worker waits and tries again."""


class TlsFileError(BucketAppError):
    """A TLS file that will not load; ``key`` names the setting that points at it."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(why)
        self.key, self.why = key, why


class ChildGone(BucketAppError):
    """A child process (SQL or snapshot) closed its pipe: it crashed, or was killed as hung."""


class ChildKilled(ChildGone):
    """A child process was killed because it ran past its hard deadline."""


class SnapshotError(BucketAppError):
    """The snapshot process could not apply a refresh, or ended."""


class SnapshotFull(SnapshotError):
    """A refresh was rolled back for lack of disk space: the files are as before it, and the
    same refresh (or a later one including it) can be applied again."""


class SnapshotDiverged(SnapshotError):
    """The disk filled between the commits of the snapshot's two files: one reflects the
    refresh, the other does not, so the snapshot is rebuilt from the changelog."""


class QueryError(BucketAppError):
    """``bucket-app query``: the worker answered with an error, or did not answer."""


class BadInput(BucketAppError):
    """A message that cannot be counted. ``reason`` is a short stable label for metrics."""

    reason = "bad_input"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class DecodeError(BadInput):
    """The bytes are not a message we can read (not JSON, not an object, Avro mismatch)."""

    reason = "decode"


class TimeError(BadInput):
    """The bucket field holds a time we cannot parse, or one outside the accepted range."""

    reason = "bad_time"


class KernelRefused(BucketAppError):
    """The native kernel does not read a fetch (a bad CRC, a malformed batch, message format
    v0/v1, a batch decompressing past the limit): ``reason`` is a short stable label and
    ``offset`` the base offset of the batch concerned, when known. The fetch is then read the
    way it is without the kernel."""

    def __init__(self, reason: str, offset: int | None, message: str) -> None:
        super().__init__(f"{reason}: {message}" + ("" if offset is None else f" (batch {offset})"))
        self.reason, self.offset = reason, offset


class HttpError(BucketAppError):
    """An HTTP error answer: status, message and optional context, rendered as JSON once."""

    def __init__(self, status: int, message: str, **context: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.context = context

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.message, "status": self.status}
        body.update(self.context)
        return body
