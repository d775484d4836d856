"""The pipeline's one exception hierarchy."""


class PinganError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(PinganError):
    """cameras.yaml is malformed; ``messages`` name the field path and line."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__("\n".join(messages))


class SourceError(PinganError):
    """A camera stream could not be opened or read (message is credential-masked)."""


class ModelError(PinganError):
    """A model file is missing, altered, or breaks its manifest contract."""


class DetectorError(PinganError):
    """Inference failed."""


class OutboxError(PinganError):
    """The local spool could not store or deliver an event."""


class SinkError(PinganError):
    """A sink refused or could not take an event; the outbox retries it."""


class PermanentSinkError(SinkError):
    """A sink rejected an event for good (bad input, 4xx); the outbox dead-letters it instead of retrying."""


class BatchUnsupported(SinkError):
    """A sink cannot deliver a batch now (the API lacks the batch route): nothing was sent; send the same
    messages one at a time (``EventSink.send``)."""
