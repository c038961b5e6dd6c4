"""Check plugins, one module per family; each class is declared in pyproject's entry points."""
