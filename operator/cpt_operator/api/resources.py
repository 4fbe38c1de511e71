"""Parse resource bodies (from YAML files or the API server) into typed, validated objects.

`parse_resource(body)` checks a body against the generated CRD schema (defaults, bounds,
unknown fields, CEL) and returns a typed `Resource`, or raises `InvalidResource` naming
every bad field. `load_manifests(paths)` reads YAML files with one clear error per problem.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.common import API_VERSION, GROUP, VERSION
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.api.crdgen import KINDS_BY_NAME, build_crd
from cpt_operator.api.metadata import metadata_errors
from cpt_operator.api.reading import DocumentError, ReadError, clip, read_documents, short_repr
from cpt_operator.api.validation import FieldError, crd_schema, validate_object


class ManifestError(Exception):
    """A file that cannot be read as Kubernetes manifests (one clear line)."""


class InvalidResource(Exception):
    """A resource that fails validation; `errors` name every bad field."""

    def __init__(self, kind: str, name: str, errors: list[FieldError], where: str = ""):
        self.kind, self.name, self.errors, self.where = kind, name, errors, where
        super().__init__(clip(f"{kind} {name!r} is invalid: " + "; ".join(str(e) for e in errors), 2000))

    def lines(self) -> list[str]:
        """One line per bad field: where (file, document), kind, name, field, problem; each cut to a sane length."""
        head = f"{self.where}: " if self.where else ""
        if self.kind:  # a resource of a known kind: name it
            head += f"{self.kind} {short_repr(self.name) if self.name else '(unnamed)'}: "
        elif self.name:
            head += f"{short_repr(self.name)}: "
        return [clip(f"{head}{err}") for err in self.errors]


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
        path = "spec"
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = err["msg"]
        message = message.removeprefix("Value error, ")
        out.append(FieldError(path, message))
    return out


def parse_resource(
    body: dict[str, Any], old: dict[str, Any] | None = None, default_namespace: str = "default", source: str = ""
) -> Resource:
    """Validate one resource body (and, on updates, its transition rules against `old`)."""
    if not isinstance(body, dict):
        found = "a list" if isinstance(body, list) else f"{short_repr(body)}"
        raise InvalidResource(
            "", "", [FieldError("(root)", f"a manifest must be a mapping with apiVersion, kind, metadata and spec, not {found}")]
        )
    kind = body.get("kind")
    api_version = body.get("apiVersion")
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    raw_name = meta.get("name")
    name = "" if raw_name is None else raw_name if isinstance(raw_name, str) else str(raw_name)
    if not isinstance(kind, str):
        what = "missing" if kind is None else f"{short_repr(kind)}, not a string"
        hint = "; is this a Kubernetes manifest (not, e.g., a Helm values file)?" if kind is None and api_version is None else ""
        raise InvalidResource("", name, [FieldError("kind", f"is {what}: expected one of {', '.join(SPEC_MODELS)}{hint}")])
    if kind not in SPEC_MODELS:
        known = ", ".join(SPEC_MODELS)
        raise InvalidResource("", name, [FieldError("kind", f"unknown kind {short_repr(kind)}; expected one of {known}")])
    if api_version != API_VERSION:
        group = api_version.split("/")[0] if isinstance(api_version, str) else None
        hint = f"{GROUP} serves only {VERSION}" if group == GROUP else f"{kind} belongs to {API_VERSION}"
        shown = "missing" if api_version is None else f"{short_repr(api_version)} is not served"
        raise InvalidResource(kind, name, [FieldError("apiVersion", f"{shown}: {hint}")])
    errors: list[FieldError] = metadata_errors(body.get("metadata"))
    if body.get("spec") is None and "spec" in body:
        errors.append(FieldError("spec", f"is null: expected an object with the {kind}'s fields (see crds/ or `kubectl explain {kind.lower()}.spec`)"))
    else:
        without_meta = {k: v for k, v in body.items() if k != "metadata"}
        defaulted, schema_errors = validate_object(without_meta, schema_of(kind), old)
        errors.extend(schema_errors)
    if errors:
        raise InvalidResource(kind, name, errors)
    # the body as the API server would store it: the input's key order, metadata as given
    defaulted = {k: copy.deepcopy(v) if k == "metadata" else defaulted[k] for k, v in body.items() if k == "metadata" or k in defaulted}
    try:
        spec = SPEC_MODELS[kind].model_validate(defaulted["spec"])
    except ValidationError as exc:  # a rule only the models state (see api/corpus.py, api/cptrun.py)
        raise InvalidResource(kind, name, _pydantic_errors(exc)) from None
    namespace = str(meta.get("namespace") or default_namespace)
    return Resource(kind, name, namespace, defaulted, spec, source, defaulted.get("status") or {})


def _files(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        elif path.exists():
            files.append(path)
        else:
            raise ManifestError(f"{clip(str(path), 200)}: no such file or directory")
    return files


def load_manifests(paths: list[str | Path], default_namespace: str = "default") -> list[Resource]:
    """Read every YAML document of `paths` (files, or folders of *.yaml) into validated resources.

    Reading is bounded and strict (see `reading`). Raises ManifestError for unreadable files
    or malformed YAML, InvalidResource for bad resources (the first one found, naming its
    file and document).
    """
    resources: list[Resource] = []
    for path in _files(paths):
        try:
            docs = read_documents(path)
        except DocumentError as exc:
            raise ManifestError(exc.describe(path)) from None
        except ReadError as exc:
            raise ManifestError(clip(f"{path}: {exc.message}")) from None
        for doc in docs:
            body = doc.body
            if body is None:
                continue
            if isinstance(body, dict) and body.get("kind") in ("Secret", "Namespace"):
                continue  # shipped beside the resources for `kubectl apply`; not ours to validate
            where = f"{path}: document {doc.index} (line {doc.line})"
            try:
                resources.append(parse_resource(body, default_namespace=default_namespace, source=str(path)))
            except InvalidResource as exc:
                raise InvalidResource(exc.kind, exc.name, exc.errors, where=where) from None
    if not resources:
        raise ManifestError(clip("no Corpus, CheckpointPolicy or CPTRun found in " + ", ".join(str(p) for p in paths)))
    return resources
