"""One exception hierarchy for graft.

Every error a user can cause derives from :class:`GraftError`, so callers (and the CLI) can catch
one type. Errors from third-party libraries are translated at the boundary with ``raise ... from``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = [
    "BackboneError",
    "ClusterError",
    "ConfigError",
    "DataError",
    "GraftError",
    "ImageError",
    "MissingExtraError",
    "ModelError",
    "Note",
    "WeightsError",
]


def _naming(message: str, parameters: Sequence[str], names: Mapping[str, str]) -> str:
    """``message`` with each of ``parameters`` spelled as ``names`` spells it.

    Only unambiguous mentions are rewritten: ``name=value`` (or a switch's exact
    ``name=False``), and the bare name where it cannot be an ordinary word: a name with an
    underscore, or the first word of the message. So "Check the weights path" stays prose.
    """
    for parameter in parameters:
        name = names.get(parameter)
        if name is None:
            continue
        # not part of a longer word, path, flag or quoted value
        word = rf"(?<![\w'\"./-]){re.escape(parameter)}"
        for key, flag in names.items():  # switches: out_of_core=False is --in-memory
            if key.startswith(parameter + "="):
                message = re.sub(rf"{word}={re.escape(key.split('=', 1)[1])}\b", flag, message)
        # a quoted plain value is typed bare on a command line: --precision int8
        message = re.sub(word + r"='([\w.:+-]+)'", name + r" \1", message)
        message = re.sub(word + "=", name + " ", message)
        bare = word if "_" in parameter else rf"^{re.escape(parameter)}"
        message = re.sub(bare + r"(?![\w'\"/.-]\w)(?![\w'\"/-])", name, message)
    return message


class GraftError(Exception):
    """Base class of every error graft raises on purpose.

    A message speaks the library's language: it names a parameter as Python spells it
    (``top_k must be >= 1``), and lists it in ``parameter`` so that a door with other names for
    it (the CLI's ``--top-k``) can say it in its own words with :meth:`naming`.

    Attributes:
        parameters: The parameters the message names, as spelled in Python.
    """

    def __init__(self, *args: object, parameter: str | Sequence[str] = ()) -> None:
        super().__init__(*args)
        self.parameters = (parameter,) if isinstance(parameter, str) else tuple(parameter)

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with each of its parameters spelled as ``names`` spells it.

        ``parameter=value`` becomes ``NAME value`` (a suggestion to type); a parameter without a
        name there keeps its Python spelling.
        """
        return _naming(str(self), self.parameters, names)


class Note(str):
    """A progress or advice line the library logs that names parameters: a plain ``str``, with
    ``parameters`` and :meth:`naming` as :class:`GraftError` has them, so the CLI's log says
    ``--split`` where Python's says ``split``."""

    parameters: tuple[str, ...]

    # typing.Self is Python 3.11+
    def __new__(cls, text: str, parameter: str | Sequence[str] = ()) -> Note:  # noqa: PYI034
        note = super().__new__(cls, text)
        note.parameters = (parameter,) if isinstance(parameter, str) else tuple(parameter)
        return note

    def naming(self, names: Mapping[str, str]) -> str:
        """The line with each of its parameters spelled as ``names`` spells it."""
        return _naming(str(self), self.parameters, names)


class ConfigError(GraftError, ValueError):
    """An option or parameter has a value graft cannot use."""


class DataError(GraftError, ValueError):
    """The dataset (folder, CSV or feature file) cannot be used as given."""


class ImageError(DataError):
    """One image file cannot be decoded; extraction skips it and reports it.

    Attributes:
        source: The image as named in messages (its path, or its kind).
        reason: Why it cannot be decoded, without the name (what reports list per file).
        kind: What went wrong, for callers that answer differently per case (the server's
            status codes): ``"empty"``, ``"not_image"`` (no image format recognised),
            ``"too_large"`` (over the pixel limit), or ``"corrupt"`` (anything else).
    """

    def __init__(self, source: str, reason: str, kind: str = "corrupt") -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.kind = kind


class BackboneError(GraftError):
    """A backbone or layer name is unknown, or a backbone cannot be built."""


class WeightsError(BackboneError):
    """Pretrained weights are missing, unreachable, or do not fit the backbone."""


class ModelError(GraftError):
    """A saved model directory is missing, incomplete, or from an incompatible version."""


class ClusterError(GraftError):
    """A job on the Ray cluster failed (a worker died more often than it may be restarted, or
    the cluster went away); what was computed before it is kept."""


class MissingExtraError(GraftError, ImportError):
    """A command needs an optional part of graft that is not installed (the message names the
    ``pip install`` command)."""
