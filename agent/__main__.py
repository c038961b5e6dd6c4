"""``python -m agent`` is ``steward``."""

from agent.cli import main

main()
