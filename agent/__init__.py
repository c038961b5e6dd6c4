"""steward's core: the check model, configuration, runner, adapters and command line."""

__version__ = "0.1.0"
