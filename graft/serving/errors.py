"""What the server answers when a request cannot be served: a status, a reason, and a label."""

from __future__ import annotations

from graft.errors import GraftError, ImageError

__all__ = ["ServeError", "image_error"]


class ServeError(GraftError):
    """A request the server refuses: answered as ``{"error": message}`` with ``status``.

    Attributes:
        status: The HTTP status code.
        reason: A short label for the rejection metrics (``too_large``, ``queue_full``...).
        headers: Extra response headers (``Retry-After`` on 503).

    A message naming a server setting names the :class:`ServeConfig` field (``parameter``);
    the app answers with :meth:`naming` in the words of whoever started it (``graft serve``:
    its flags).
    """

    def __init__(self, status: int, message: str, reason: str = "bad_request",
                 headers: dict[str, str] | None = None,
                 parameter: str | tuple[str, ...] = ()) -> None:
        super().__init__(message, parameter=parameter)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = headers or {}


# An image that cannot be decoded -> the status that says why.
_IMAGE_STATUS = {"empty": (400, "empty"), "not_image": (415, "not_image"),
                 "too_large": (413, "too_many_pixels"), "corrupt": (400, "corrupt")}


def image_error(error: ImageError, index: int, count: int) -> ServeError:
    """The answer for image ``index`` of ``count`` in a request failing to decode."""
    status, reason = _IMAGE_STATUS.get(error.kind, (400, "corrupt"))
    which = f"image {index}" if count > 1 else "the image"
    if error.kind == "not_image":
        hint = (" Send the bytes of a JPEG, PNG, GIF, BMP, TIFF or WebP file (its content decides, "
                "not its name or Content-Type).")
    elif error.kind == "too_large":
        hint = " Resize it first, or start the server with a larger max_pixels."
    else:
        hint = ""
    return ServeError(status, f"Cannot read {which}: {error.reason}.{hint}", reason,
                      parameter="max_pixels" if hint else ())
