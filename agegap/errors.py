"""The one exception type users see, and how command lines report it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class AgegapError(Exception):
    """A problem with the user's input (a file, a parameter, an archive).

    Raised with a one-line message that names the culprit and what is wrong, so the
    command-line wrappers can print it alone, without a traceback, and exit non-zero.
    """


def exits_cleanly(main: F) -> F:
    """Turn :class:`AgegapError` into ``error: <message>`` on stderr and exit status 1.

    Tracebacks are for bugs; a bad parameter or a missing file deserves one line.
    """

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except AgegapError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
