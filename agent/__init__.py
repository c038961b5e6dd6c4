"""steward's core: the check model, configuration, runner, adapters and command line."""

# No `from __future__ import annotations` here: this package must import on Python 3.6 far
# enough for agent.entry to say which Python steward needs.

__version__ = "0.1.0"

