"""The published JSON Schemas (agent/output/*.schema.json), with their references to one
another resolved: ``validate(doc, "backup-last.schema.json")``."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
from referencing import Registry, Resource

from tests.conftest import REPO

SCHEMAS = REPO / "agent" / "output"


@functools.cache
def _registry() -> Registry:
    docs = [json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.schema.json"))]
    for doc in docs:
        jsonschema.Draft202012Validator.check_schema(doc)
    return Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in docs)


def schema(name: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / name).read_text()))


def validate(doc: Any, name: str) -> None:
    """Raises jsonschema.ValidationError when ``doc`` does not match schema ``name``."""
    validator = jsonschema.Draft202012Validator(
        schema(name), registry=_registry(), format_checker=jsonschema.FormatChecker())
    validator.validate(doc)
