"""User-facing errors: one line that says what went wrong and what to do.

The CLI prints them as ``fissure: error: <message>`` with a non-zero exit; the servers map
``http_status`` to the response code. Anything that is not a FissureError is a bug.
"""


class FissureError(Exception):
    http_status = 400
    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(FissureError):
    """The caller sent something unusable (bad image, wrong tensor shape, malformed JSON)."""


class PayloadTooLarge(InputError):
    http_status = 413


class UnsupportedMediaType(InputError):
    http_status = 415


class NotFoundError(FissureError):
    http_status = 404
    exit_code = 3


class DataError(FissureError):
    """A dataset folder is empty, inconsistent or unreadable."""
