# Parseable by old interpreters (see agent/entry.py), so that they get one line, not a traceback.
"""``python -m agent`` is ``steward``."""

from agent.entry import main

main()
