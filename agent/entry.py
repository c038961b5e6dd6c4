# This module must stay parseable by old interpreters (tested with 2.7 and 3.6): no
# "from __future__ import annotations", no f-strings, no annotations (type comments).
"""The ``steward`` console script and ``python -m agent``: under a Python older than 3.9
it prints one line and exits 2 instead of a traceback from syntax or APIs it lacks."""

import os
import sys

MINIMUM = (3, 9)
EXIT_USAGE = 2
# The EL9 RPM (packaging/steward.spec) carries the library neither EL9 nor EPEL 9 ships
# (jeepney) in a private folder instead of site-packages, so it never clashes with a
# distribution package. Appended: an installed distribution package wins.
BUNDLED = "/usr/share/steward/bundled"


def too_old(version_info=None):  # type: (object) -> object
    """The refusal line for an interpreter older than MINIMUM (default: this one), or None."""
    info = sys.version_info if version_info is None else version_info
    have = tuple(info[:2])  # type: ignore[index]
    if have >= MINIMUM:
        return None
    return "steward needs Python {}.{} or newer (this is {}.{})".format(  # noqa: UP032
        MINIMUM[0], MINIMUM[1], have[0], have[1])


def main():  # type: () -> None
    message = too_old()
    if message is not None:
        sys.stderr.write(str(message) + "\n")
        sys.exit(EXIT_USAGE)
    if os.path.isdir(BUNDLED) and BUNDLED not in sys.path:
        sys.path.append(BUNDLED)
    from agent.cli import main as cli_main

    cli_main()
