"""Validate an object against a CRD's structural OpenAPI v3 schema the way the API server
does: defaults, types, bounds, patterns, enums, unknown fields (strict field validation,
as `kubectl apply` uses), then the CEL `x-kubernetes-validations` rules, evaluated by a
real CEL implementation (cel-python), transition rules included when the old object is
given.

Every problem is a `FieldError` whose path names the field (`spec.training.learningRate`).
"""

from __future__ import annotations

import copy
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import celpy

_MISSING = object()


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- defaults


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """A copy of `value` with the schema's defaults filled in (recursively, as the API server does)."""
    value = copy.deepcopy(value)
    _default_in_place(value, schema)
    return value


def _default_in_place(value: Any, schema: dict[str, Any]) -> None:
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default_in_place(value[key], sub)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for item in value.values():
            _default_in_place(item, schema["additionalProperties"])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default_in_place(item, schema["items"])


# --------------------------------------------------------------------------- structure


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut for echoing in a message (a 5 MB value is not echoed whole)."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def normalize_numbers(value: Any, schema: dict[str, Any]) -> Any:
    """Integral floats in integer (and int-or-string) fields become ints, as the API server
    reads JSON: `totalTokens: 5e10` is the integer 50000000000. Returns the new value."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
        if schema.get("type") == "integer" or schema.get("x-kubernetes-int-or-string"):
            return int(value)
        return value
    if isinstance(value, dict):
        if "properties" in schema:
            props = schema["properties"]
            for key, item in value.items():
                if key in props:
                    value[key] = normalize_numbers(item, props[key])
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                value[key] = normalize_numbers(item, schema["additionalProperties"])
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            value[i] = normalize_numbers(item, schema["items"])
    return value


def check_structure(value: Any, schema: dict[str, Any], path: str, errors: list[FieldError]) -> None:
    """Append the structural problems of `value` (already defaulted) to `errors`."""
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
            errors.append(FieldError(path, f"must be an integer or a string, not {_describe(value)}"))
            return
        value = str(value)
        kind = "string"
    else:
        kind = schema.get("type")
    if kind and not _type_ok(value, kind):
        errors.append(FieldError(path, f"must be {('an ' if kind[0] in 'aeiou' else 'a ') + kind}, not {_describe(value)}"))
        return
    if kind == "number" and isinstance(value, float) and not math.isfinite(value):
        errors.append(FieldError(path, "must be a finite number, not Infinity or NaN"))
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(str(v) for v in schema["enum"])
        errors.append(FieldError(path, f"unsupported value {_short(value)}: must be one of {allowed}"))
    if kind in ("integer", "number"):
        _check_bounds(value, schema, path, errors)
    if kind == "string":
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(FieldError(path, f"must be at least {schema['minLength']} characters long"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(FieldError(path, f"must be at most {schema['maxLength']} characters long (has {len(value):,})"))
        elif "pattern" in schema and not re.search(schema["pattern"], value):
            if schema.get("x-kubernetes-int-or-string"):
                errors.append(FieldError(path, f"{_short(value)} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi, 1.5e3)"))
                return
            errors.append(FieldError(path, f"{_short(value)} does not match the pattern {schema['pattern']}"))
    if kind == "array":
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(FieldError(path, f"must have at least {schema['minItems']} item(s)"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(FieldError(path, f"must have at most {schema['maxItems']} items"))
        for i, item in enumerate(value):
            check_structure(item, schema.get("items", {}), _join(path, i), errors)
    if kind == "object":
        _check_object(value, schema, path, errors)


def _check_bounds(value: float, schema: dict[str, Any], path: str, errors: list[FieldError]) -> None:
    if "minimum" in schema:
        low = schema["minimum"]
        if schema.get("exclusiveMinimum") and value <= low:
            errors.append(FieldError(path, f"must be greater than {low}"))
        elif value < low:
            errors.append(FieldError(path, f"must be greater than or equal to {low}"))
    if "maximum" in schema:
        high = schema["maximum"]
        if schema.get("exclusiveMaximum") and value >= high:
            errors.append(FieldError(path, f"must be less than {high}"))
        elif value > high:
            errors.append(FieldError(path, f"must be less than or equal to {high}"))


def _check_object(value: dict[str, Any], schema: dict[str, Any], path: str, errors: list[FieldError]) -> None:
    props = schema.get("properties")
    for key in schema.get("required", []):
        if key not in value:
            errors.append(FieldError(_join(path, key), "required field is missing"))
    if props is not None:
        for key, item in value.items():
            if key in props:
                check_structure(item, props[key], _join(path, key), errors)
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                hint = ""
                if key == "namespace":
                    hint = "; references name objects in the resource's own namespace only"
                errors.append(FieldError(_join(path, key), f"unknown field{hint}"))
    elif isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            check_structure(item, schema["additionalProperties"], _join(path, key), errors)


# --------------------------------------------------------------------------- CEL


@functools.lru_cache(maxsize=512)
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _to_cel_input(value: Any, schema: dict[str, Any]) -> Any:
    """JSON value -> the typed value the API server hands CEL (numbers in `number` fields are doubles)."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {k: _to_cel_input(v, props.get(k, extra)) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cel_input(v, schema.get("items", {})) for v in value]
    return value


def _uses_old_self(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


def check_rules(
    value: Any, schema: dict[str, Any], path: str, errors: list[FieldError], old: Any = _MISSING
) -> None:
    """Evaluate every `x-kubernetes-validations` rule at and below this node."""
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key in value:
                sub_old = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
                check_rules(value[key], sub, _join(path, key), errors, sub_old)
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            # Items of plain lists do not correlate with the old object: no transition rules there.
            check_rules(item, schema["items"], _join(path, i), errors, _MISSING)
    rules = [r for r in schema.get("x-kubernetes-validations", []) if old is not _MISSING or not _uses_old_self(r["rule"])]
    if not rules:
        return  # (transition rules only run on updates: no activation to build)
    activation = {"self": celpy.json_to_cel(_to_cel_input(value, schema))}
    if old is not _MISSING:
        activation["oldSelf"] = celpy.json_to_cel(_to_cel_input(old, schema))
    for rule in rules:
        if _uses_old_self(rule["rule"]) and old is _MISSING:
            continue  # a transition rule only runs on updates
        field = path + rule.get("fieldPath", "") if path or not rule.get("fieldPath") else rule["fieldPath"].lstrip(".")
        try:
            result = _program(rule["rule"]).evaluate(activation)
        except celpy.CELEvalError as exc:
            errors.append(FieldError(field or "(root)", f"rule {rule['rule']!r} could not be evaluated: {exc.args[0]}"))
            continue
        if not bool(result):
            errors.append(FieldError(field or "(root)", rule.get("message", f"failed rule: {rule['rule']}")))


# --------------------------------------------------------------------------- entry point


def crd_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    for item in crd["spec"]["versions"]:
        if item["name"] == version:
            return item["schema"]["openAPIV3Schema"]
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


def validate_object(
    obj: dict[str, Any], schema: dict[str, Any], old: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[FieldError]]:
    """Default and validate `obj` against `schema` (an openAPIV3Schema).

    Returns the defaulted object and every problem found; CEL rules run only once the
    structure is sound (as the API server does, so rules never see ill-typed values).
    """
    defaulted = normalize_numbers(apply_defaults(obj, schema), schema)
    errors: list[FieldError] = []
    check_structure(defaulted, schema, "", errors)
    if not errors:
        old_defaulted = normalize_numbers(apply_defaults(old, schema), schema) if old is not None else _MISSING
        check_rules(defaulted, schema, "", errors, old_defaulted)
    return defaulted, errors
