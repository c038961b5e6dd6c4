"""steward's core: the check model, configuration, runner, adapters and command line."""

# No `from __future__ import annotations` here: this package must import on Python 3.6 far
# enough for agent.entry to say which Python steward needs.

import os
import sys

__version__ = "0.1.0"

# The EL9 RPM (packaging/steward.spec) carries the libraries neither EL9 nor EPEL 9 ships
# (jeepney) in a private folder instead of site-packages, so it never
# clashes with a distribution package. Appended: an installed distribution package wins.
BUNDLED = "/usr/share/steward/bundled"
if os.path.isdir(BUNDLED) and BUNDLED not in sys.path:
    sys.path.append(BUNDLED)
