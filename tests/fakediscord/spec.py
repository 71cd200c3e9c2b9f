"""Validate REST bodies against Discord's OpenAPI 3.1 spec (read from ../shared/discord/openapi.json).

The spec is optional test data: when the file is absent, `load_spec()` returns None and
`skip_reason()` says why, so callers can skip validation and state it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

# tests/fakediscord/spec.py -> parents[2] is the repository root; shared data sits beside it.
SPEC_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "discord" / "openapi.json"
SPEC_URI = "urn:discord:openapi"
SPEC_SKIP_REASON = "Discord's OpenAPI spec not found at ../shared/discord/openapi.json; validation skipped"


def skip_reason(path: Path = SPEC_PATH) -> str:
    """Why validation is skipped when the spec file at `path` is missing."""
    if path == SPEC_PATH:
        return SPEC_SKIP_REASON
    return f"Discord's OpenAPI spec not found at {path}; validation skipped"


@dataclass(frozen=True)
class Operation:
    """One spec operation: a method on a path template, with its schema pointers."""

    method: str
    template: str
    pattern: re.Pattern[str]
    literal_segments: int
    query_params: frozenset[str]


@dataclass
class SpecViolation:
    """A body (request or response) the spec rejects, or a call the spec does not know."""

    direction: str  # "request" or "response"
    method: str
    path: str
    template: str | None
    errors: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = self.template or "<no operation>"
        return f"{self.direction} {self.method} {self.path} ({where}): " + "; ".join(self.errors)


_SHALLOW = frozenset({"type", "enum", "const"})

# Where the spec is stricter than Discord and discord.py, the docs and real behaviour win (the spec's
# README says the same). Each entry: direction, dotted-path regex, failing JSON Schema keyword.
KNOWN_DIVERGENCES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    # discord.py numbers new uploads 0, 1, ... as ints in `attachments`; Discord accepts them.
    ("request", re.compile(r"^(data\.)?attachments\.\d+\.id$"), "type"),
    # Discord's docs show nested form-error codes as strings ("BASE_TYPE_MAX_LENGTH"); the spec says int.
    ("response", re.compile(r"^errors\.(.+\.)?_errors\.\d+\.code$"), "type"),
)


def _deepest(error: ValidationError) -> ValidationError:
    """The most relevant cause of a oneOf/anyOf failure."""
    while error.context:
        branches: dict[Any, list[ValidationError]] = {}
        for cause in error.context:
            branches.setdefault(cause.relative_schema_path[0], []).append(cause)
        # Branches whose `type` discriminator does not match are not what the caller meant...
        meant = [
            causes for causes in branches.values()
            if not any(c.validator in _SHALLOW and list(c.relative_path) == ["type"] for c in causes)
        ] or list(branches.values())
        # ...and of the rest, the branch that got furthest into the body is.
        error = max(
            (c for causes in meant for c in causes),
            key=lambda e: (len(e.absolute_path), e.validator not in _SHALLOW),
        )
    return error


def _describe(error: ValidationError) -> str:
    """One short line per error, without huge reprs."""
    where = ".".join(map(str, error.absolute_path)) or "<body>"
    if error.validator in ("maxLength", "minLength", "maxItems", "minItems"):
        bound = "at most" if error.validator.startswith("max") else "at least"
        unit = "characters" if error.validator.endswith("Length") else "items"
        return f"{where}: must be {bound} {error.validator_value} {unit} (got {len(error.instance)})"
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return f"{where}: {message}"


def _tolerated(direction: str, error: ValidationError) -> bool:
    where = ".".join(map(str, error.absolute_path))
    return any(d == direction and p.match(where) and error.validator == v for d, p, v in KNOWN_DIVERGENCES)


def _escape_pointer(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


class Spec:
    """The loaded spec: operation lookup by method and concrete path, and body validation."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry: Registry = Registry().with_resource(SPEC_URI, resource)
        self.operations: list[Operation] = []
        for template, item in document["paths"].items():
            shared_params = item.get("parameters", [])
            regex = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
            literals = sum(1 for seg in template.split("/") if seg and not seg.startswith("{"))
            for method, op in item.items():
                if method == "parameters":
                    continue
                params = [*shared_params, *op.get("parameters", [])]
                query = frozenset(p["name"] for p in params if p.get("in") == "query")
                self.operations.append(
                    Operation(method.upper(), template, re.compile(regex), literals, query)
                )
        # Prefer literal segments over placeholders: ".../messages/@original" beats ".../messages/{id}".
        self.operations.sort(key=lambda o: -o.literal_segments)
        self._validators: dict[str, Draft202012Validator] = {}

    def find(self, method: str, path: str) -> Operation | None:
        """The operation serving `method path` (path relative to /api/v10), or None."""
        for op in self.operations:
            if op.method == method.upper() and op.pattern.match(path):
                return op
        return None

    def _validator(self, pointer: str) -> Draft202012Validator:
        validator = self._validators.get(pointer)
        if validator is None:
            validator = Draft202012Validator({"$ref": f"{SPEC_URI}#{pointer}"}, registry=self.registry)
            self._validators[pointer] = validator
        return validator

    def _errors(self, pointer: str, body: Any, direction: str) -> list[str]:
        found = [_deepest(e) for e in self._validator(pointer).iter_errors(body)]
        found.sort(key=lambda e: [str(p) for p in e.absolute_path])
        return [_describe(e) for e in found if not _tolerated(direction, e)]

    def _operation_pointer(self, op: Operation) -> str:
        return f"/paths/{_escape_pointer(op.template)}/{op.method.lower()}"

    def validate_request(
        self, method: str, path: str, query: dict[str, str], body: Any | None
    ) -> SpecViolation | None:
        """Check a request's query names and JSON body; a multipart `payload_json` counts as the body."""
        op = self.find(method, path)
        if op is None:
            return SpecViolation("request", method, path, None, ["no such operation in the spec"])
        errors = [f"unknown query parameter {name!r}" for name in query if name not in op.query_params]
        if body is not None:
            content = self.document["paths"][op.template][op.method.lower()].get("requestBody", {})
            if "application/json" in content.get("content", {}):
                pointer = self._operation_pointer(op) + "/requestBody/content/application~1json/schema"
                errors += self._errors(pointer, body, "request")
            else:
                errors.append("the spec takes no JSON body here")
        return SpecViolation("request", method, path, op.template, errors) if errors else None

    def validate_response(
        self, method: str, path: str, status: int, body: Any | None
    ) -> SpecViolation | None:
        """Check a response body against the schema the spec declares for its status."""
        op = self.find(method, path)
        if op is None:
            return SpecViolation("response", method, path, None, ["no such operation in the spec"])
        responses = self.document["paths"][op.template][op.method.lower()]["responses"]
        key = str(status) if str(status) in responses else f"{str(status)[0]}XX"
        if key not in responses:
            return SpecViolation("response", method, path, op.template, [f"status {status} not declared"])
        pointer = self._operation_pointer(op) + f"/responses/{key}"
        declared = responses[key]
        if "$ref" in declared:  # shared responses live under components/responses
            pointer = declared["$ref"].removeprefix("#")
            declared = self.registry.resolver(SPEC_URI).lookup(f"{SPEC_URI}#{pointer}").contents
        has_json = "application/json" in declared.get("content", {})
        if body is None:
            errors = ["the spec declares a JSON body for this status"] if has_json else []
        elif not has_json:
            errors = ["the spec declares no body for this status"]
        else:
            errors = self._errors(pointer + "/content/application~1json/schema", body, "response")
        return SpecViolation("response", method, path, op.template, errors) if errors else None


@cache
def load_spec(path: Path = SPEC_PATH) -> Spec | None:
    """The parsed spec, loaded once per process; None when the file is absent."""
    if not path.is_file():
        return None
    return Spec(json.loads(path.read_text(encoding="utf-8")))
