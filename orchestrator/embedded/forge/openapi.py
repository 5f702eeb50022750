"""GitHub's official OpenAPI description, as a checker of requests and responses.

The local forge (``server.py``) answers the same REST calls as GitHub, and a
stand-in is only worth its tests if it speaks GitHub's shapes, not the
shapes its author guessed. So every request it gets and every response it
sends is checked against the description GitHub publishes (npm
``@octokit/openapi``, installed by ``scripts/github-openapi``).

The description is OpenAPI 3.0 (``nullable``, ``$ref`` into
``components``). It is loaded once per process from the non-dereferenced
file (13 MB, well under a second; the dereferenced one is 73 MB); each
operation's schemas are resolved and turned into JSON Schema (draft 4, which
3.0's schema dialect extends) only when that operation is first used, and
their compiled validators are kept.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator

REPO_ROOT = Path(__file__).resolve().parents[3]
SPEC_FILE = "node_modules/@octokit/openapi/generated/api.github.com.json"
DEFAULT_SPEC = REPO_ROOT / ".github-openapi" / SPEC_FILE
MAX_ERRORS = 5  # per message: enough to fix a shape, short enough to read


class SpecMissing(RuntimeError):
    """GitHub's OpenAPI description is not installed."""


def default_spec() -> Path:
    """The installed description, or SpecMissing saying how to install it."""
    if not DEFAULT_SPEC.is_file():
        raise SpecMissing(
            f"GitHub's OpenAPI description is missing ({DEFAULT_SPEC}): run scripts/github-openapi"
        )
    return DEFAULT_SPEC


@functools.cache
def load(path: Path) -> OpenApi:
    """The description at ``path``, parsed once per process."""
    if not path.is_file():
        raise SpecMissing(
            f"GitHub's OpenAPI description is missing ({path}): run scripts/github-openapi"
        )
    return OpenApi(json.loads(path.read_bytes()))


class _Converter:
    """OpenAPI 3.0 schemas to JSON Schema: ``$ref`` resolved (shared, so each
    component is converted once; a cycle stays a cycle), ``nullable`` made a
    ``null`` type.

    ``strict`` (for request bodies) also refuses properties an object schema
    does not name: GitHub ignores them, so a misspelt field (``titel``) would
    otherwise pass unseen and the real call would silently lose it."""

    def __init__(self, document: dict[str, Any], *, strict: bool = False) -> None:
        self.document = document
        self.strict = strict
        self.refs: dict[tuple[str, bool], Any] = {}

    def resolve(self, node: Any) -> Any:
        """A ``$ref`` (parameters, request bodies, responses) followed to its target."""
        while isinstance(node, dict) and "$ref" in node:
            node = self._pointer(node["$ref"])
        return node

    def _pointer(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise ValueError(f"external $ref {ref!r} is not supported")
        node: Any = self.document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def schema(self, node: Any, strict: bool | None = None) -> Any:
        strict = self.strict if strict is None else strict
        if isinstance(node, list):
            return [self.schema(item, strict) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            key = (node["$ref"], strict)
            if key not in self.refs:
                out: dict[str, Any] = {}
                self.refs[key] = out  # before converting: a cycle finds it
                out.update(self.schema(self._pointer(node["$ref"]), strict))
            return self.refs[key]
        out = {}
        for key, value in node.items():
            if key in ("properties", "patternProperties", "definitions"):
                out[key] = {name: self.schema(sub, strict) for name, sub in value.items()}
            elif key == "allOf":  # each part sees only its own properties
                out[key] = self.schema(value, strict=False)
            elif key in ("example", "examples", "discriminator", "xml", "externalDocs"):
                continue
            else:
                out[key] = self.schema(value, strict)
        if strict and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        if out.pop("nullable", False):
            out = _nullable(out)
        return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also admits ``null`` (OpenAPI 3.0's ``nullable: true``)."""
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        schema = {**schema, "type": [*types, "null"]}
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    if any(key in schema for key in ("allOf", "anyOf", "oneOf", "$ref", "enum")):
        return {"anyOf": [{"type": "null"}, schema]}
    return schema


@dataclass
class Operation:
    """One method on one path template, and its validators (built on first use)."""

    method: str
    template: str
    spec: dict[str, Any]
    converter: _Converter
    _validators: dict[str, Draft4Validator | None] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.spec.get("operationId") or f"{self.method} {self.template}")

    def _validator(self, key: str, schema: Any, *, strict: bool = False) -> Draft4Validator | None:
        if key not in self._validators:
            self._validators[key] = (
                None if schema is None else Draft4Validator(self.converter.schema(schema, strict))
            )
        return self._validators[key]

    def parameters(self) -> list[dict[str, Any]]:
        return [self.converter.resolve(p) for p in self.spec.get("parameters", [])]

    def check_request(
        self, path_params: dict[str, str], query: dict[str, str], body: Any, has_body: bool
    ) -> list[str]:
        """What is wrong with a request (empty: nothing)."""
        errors: list[str] = []
        given = {"path": path_params, "query": query}
        for param in self.parameters():
            where, name = param.get("in"), param["name"]
            if where not in given:
                continue  # headers and cookies: not checked
            values = given[where]
            if name not in values:
                if param.get("required"):
                    errors.append(f"{where} parameter {name!r} is required")
                continue
            value = _coerce(values[name], param.get("schema", {}))
            validator = self._validator(f"{where}:{name}", param.get("schema"))
            errors += _errors(validator, value, f"{where} parameter {name!r}")
        known = {p["name"] for p in self.parameters() if p.get("in") == "query"}
        errors += [
            f"query parameter {name!r} is not defined" for name in query if name not in known
        ]
        request_body = self.converter.resolve(self.spec.get("requestBody"))
        if request_body is None:
            if has_body:
                errors.append("a body was sent, but the operation takes none")
            return errors
        if not has_body:
            if request_body.get("required"):
                errors.append("the request body is required")
            return errors
        schema = _json_schema(request_body.get("content", {}))
        errors += _errors(self._validator("body", schema, strict=True), body, "request body")
        return errors

    def check_response(self, status: int, body: Any, has_body: bool) -> list[str]:
        """What is wrong with a response (empty: nothing)."""
        responses = self.spec.get("responses", {})
        response = responses.get(str(status), responses.get("default"))
        if response is None:
            if status >= 400:  # GitHub lists only some errors (404 and 401 happen anywhere)
                return []
            return [f"status {status} is not documented (documented: {', '.join(responses)})"]
        response = self.converter.resolve(response)
        schema = _json_schema(response.get("content", {}))
        if schema is None:
            return ["a body was sent, but the response has none"] if has_body else []
        if not has_body:
            return ["the response body is missing"]
        return _errors(self._validator(f"response:{status}", schema), body, "response body")


def _json_schema(content: dict[str, Any]) -> Any:
    for media, item in content.items():
        if "json" in media:
            return item.get("schema", {})
    return None


def _coerce(value: str, schema: dict[str, Any]) -> Any:
    """A path or query string as the type its schema names (the wire has only strings)."""
    kind = schema.get("type")
    if kind == "integer" and re.fullmatch(r"-?\d+", value):
        return int(value)
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            return value
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    if kind == "array":
        return [_coerce(v, schema.get("items", {})) for v in value.split(",")]
    return value


def _errors(validator: Draft4Validator | None, value: Any, what: str) -> list[str]:
    if validator is None:
        return []
    found = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    out = []
    for error in found[:MAX_ERRORS]:
        where = "/".join(str(p) for p in error.absolute_path)
        out.append(f"{what}{' at ' + where if where else ''}: {_short(error.message)}")
    if len(found) > MAX_ERRORS:
        out.append(f"{what}: and {len(found) - MAX_ERRORS} more")
    return out


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[:limit] + "..."


class OpenApi:
    """The operations of a description, matched by method and concrete path."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.converter = _Converter(document)
        self._by_length: dict[int, list[tuple[int, re.Pattern[str], list[str], str]]] = {}
        self._operations: dict[tuple[str, str], Operation] = {}
        for template, item in document.get("paths", {}).items():
            segments = template.strip("/").split("/")
            names = [s[1:-1] for s in segments if s.startswith("{") and s.endswith("}")]
            pattern = "/".join(
                "([^/]+)" if s.startswith("{") and s.endswith("}") else re.escape(s)
                for s in segments
            )
            self._by_length.setdefault(len(segments), []).append(
                (len(segments) - len(names), re.compile(pattern + r"\Z"), names, template)
            )
            for method, spec in item.items():
                if isinstance(spec, dict) and "responses" in spec:
                    self._operations[(method.upper(), template)] = Operation(
                        method.upper(), template, spec, self.converter
                    )
        for candidates in self._by_length.values():
            candidates.sort(key=lambda c: -c[0])  # literal segments win over parameters

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        """The operation serving ``method path``, with its path parameters."""
        segments = path.strip("/").split("/")
        for _literal, pattern, names, template in self._by_length.get(len(segments), []):
            found = pattern.match(path.strip("/"))
            if found and (method.upper(), template) in self._operations:
                return self._operations[(method.upper(), template)], dict(
                    zip(names, found.groups(), strict=True)
                )
        return None
