"""Parse resource bodies (from YAML files or the API server) into typed, validated objects.

`parse_resource(body)` checks a body against the generated CRD schema (defaults, bounds,
unknown fields, CEL) and returns a typed `Resource`, or raises `InvalidResource` naming
every bad field. `load_manifests(paths)` reads YAML files with one clear error per problem.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.common import API_VERSION, GROUP, VERSION
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.api.crdgen import KINDS_BY_NAME, build_crd
from cpt_operator.api.validation import FieldError, crd_schema, validate_object


class ManifestError(Exception):
    """A file that cannot be read as Kubernetes manifests (one clear line)."""


class InvalidResource(Exception):
    """A resource that fails validation; `errors` name every bad field."""

    def __init__(self, kind: str, name: str, errors: list[FieldError]):
        self.kind, self.name, self.errors = kind, name, errors
        super().__init__(f"{kind} {name!r} is invalid: " + "; ".join(str(e) for e in errors))


@dataclass
class Resource:
    """A validated resource: its identity, the defaulted body and the typed spec."""

    kind: str
    name: str
    namespace: str
    body: dict[str, Any]
    spec: CorpusSpec | CheckpointPolicySpec | CPTRunSpec
    source: str = ""
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


SPEC_MODELS: dict[str, type[BaseModel]] = {
    "Corpus": CorpusSpec,
    "CheckpointPolicy": CheckpointPolicySpec,
    "CPTRun": CPTRunSpec,
}


@functools.lru_cache(maxsize=None)
def schema_of(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of one of our kinds, as generated from the models."""
    return crd_schema(build_crd(KINDS_BY_NAME[kind]), VERSION)


def _pydantic_errors(exc: ValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors():
        path = ".".join(["spec", *(str(p) for p in err["loc"])])
        out.append(FieldError(path, err["msg"]))
    return out


def parse_resource(
    body: dict[str, Any], old: dict[str, Any] | None = None, default_namespace: str = "default", source: str = ""
) -> Resource:
    """Validate one resource body (and, on updates, its transition rules against `old`)."""
    if not isinstance(body, dict):
        raise InvalidResource("?", "?", [FieldError("(root)", "a manifest must be a mapping")])
    kind = body.get("kind")
    api_version = body.get("apiVersion")
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    name = str(meta.get("name", ""))
    errors: list[FieldError] = []
    if kind not in SPEC_MODELS:
        known = ", ".join(SPEC_MODELS)
        raise InvalidResource(str(kind), name, [FieldError("kind", f"unknown kind {kind!r}; expected one of {known}")])
    if api_version != API_VERSION:
        group = str(api_version).split("/")[0]
        hint = f"{GROUP} serves only {VERSION}" if group == GROUP else f"{kind} belongs to {API_VERSION}"
        raise InvalidResource(kind, name, [FieldError("apiVersion", f"{api_version!r} is not served: {hint}")])
    if not name:
        errors.append(FieldError("metadata.name", "required field is missing"))
    elif len(name) > 63 or not _is_dns_label(name):
        errors.append(FieldError("metadata.name", f"{name!r} must be a DNS-1123 label (lower case, digits, '-', at most 63)"))
    defaulted, schema_errors = validate_object(body, schema_of(kind), old)
    errors.extend(schema_errors)
    if errors:
        raise InvalidResource(kind, name, errors)
    try:
        spec = SPEC_MODELS[kind].model_validate(defaulted["spec"])
    except ValidationError as exc:  # the schema and the models disagree: still a clear error
        raise InvalidResource(kind, name, _pydantic_errors(exc)) from None
    namespace = str(meta.get("namespace") or default_namespace)
    return Resource(kind, name, namespace, defaulted, spec, source, defaulted.get("status") or {})


def _is_dns_label(name: str) -> bool:
    import re

    from cpt_operator.api.common import DNS1123_LABEL

    return re.match(DNS1123_LABEL, name) is not None


def load_manifests(paths: list[str | Path], default_namespace: str = "default") -> list[Resource]:
    """Read every YAML document of `paths` (files, or folders of *.yaml) into validated resources.

    Raises ManifestError for unreadable files or malformed YAML, InvalidResource for bad
    resources (the first one found, naming its file).
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        elif path.exists():
            files.append(path)
        else:
            raise ManifestError(f"{path}: no such file or directory")
    resources: list[Resource] = []
    for path in files:
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ManifestError(f"{path}: malformed YAML{where}: {problem}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path}: cannot read: {exc}") from None
        for doc in docs:
            if doc is None:
                continue
            if isinstance(doc, dict) and doc.get("kind") in ("Secret", "Namespace"):
                continue  # shipped beside the resources for `kubectl apply`; not ours to validate
            try:
                resources.append(parse_resource(doc, default_namespace=default_namespace, source=str(path)))
            except InvalidResource as exc:
                raise InvalidResource(exc.kind, exc.name, exc.errors) from None
    if not resources:
        raise ManifestError("no Corpus, CheckpointPolicy or CPTRun found in " + ", ".join(str(p) for p in paths))
    return resources
