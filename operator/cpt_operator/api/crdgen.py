"""Generate the CustomResourceDefinitions under `crds/` from the models (one source of the API).

    python -m cpt_operator.api.crdgen            # rewrite crds/*.yaml
    python -m cpt_operator.api.crdgen --check    # exit 1 when crds/ is out of date

Each pydantic field becomes a structural OpenAPI v3 node with its description, default,
bounds, pattern and enum; each model's `cel_rules` become `x-kubernetes-validations`.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec, CheckpointPolicyStatus
from cpt_operator.api.common import CATEGORY, CEL, GROUP, VERSION, Condition, QuantityMarker
from cpt_operator.api.corpus import CorpusSpec, CorpusStatus
from cpt_operator.api.cptrun import CPTRUN_ROOT_RULES, CPTRunSpec, CPTRunStatus


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    printer_columns: tuple[dict[str, Any], ...]
    root_rules: tuple[CEL, ...] = ()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def file_name(self) -> str:
        return f"{GROUP}_{self.plural}.yaml"


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

KINDS: tuple[KindInfo, ...] = (
    KindInfo(
        kind="Corpus",
        plural="corpora",
        singular="corpus",
        short_names=("corp",),
        spec=CorpusSpec,
        status=CorpusStatus,
        description="A corpus the operator curates (dedup, quality, PII) and tokenizes into packed shards.",
        printer_columns=(
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Documents", "type": "integer", "jsonPath": ".status.documents"},
            {"name": "Tokens", "type": "integer", "jsonPath": ".status.tokens"},
            {"name": "Shards", "type": "integer", "jsonPath": ".status.shards"},
            _AGE,
        ),
    ),
    KindInfo(
        kind="CheckpointPolicy",
        plural="checkpointpolicies",
        singular="checkpointpolicy",
        short_names=("ckptpol", "cpol"),
        spec=CheckpointPolicySpec,
        status=CheckpointPolicyStatus,
        description="How often CPTRuns save checkpoints, which ones they keep, and where.",
        printer_columns=(
            {"name": "Interval", "type": "integer", "jsonPath": ".spec.saveInterval"},
            {"name": "Last", "type": "integer", "jsonPath": ".spec.keepLastN"},
            {"name": "Best", "type": "integer", "jsonPath": ".spec.keepBestK"},
            {"name": "Metric", "type": "string", "jsonPath": ".spec.bestMetric"},
            _AGE,
        ),
    ),
    KindInfo(
        kind="CPTRun",
        plural="cptruns",
        singular="cptrun",
        short_names=("cpr",),
        spec=CPTRunSpec,
        status=CPTRunStatus,
        description="A continued-pretraining run: corpora mixed, trained with DeepSpeed, checkpoints kept by policy, "
        "halted when it forgets.",
        printer_columns=(
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Step", "type": "string", "jsonPath": ".status.progress.display"},
            {"name": "Domain-PPL", "type": "number", "jsonPath": ".status.metrics.domainPerplexity"},
            {"name": "General-Regr", "type": "number", "jsonPath": ".status.metrics.generalRegression"},
            {"name": "Best", "type": "integer", "jsonPath": ".status.bestCheckpoint.step"},
            _AGE,
        ),
        root_rules=CPTRUN_ROOT_RULES,
    ),
)
KINDS_BY_NAME = {k.kind: k for k in KINDS}

REPO_ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = REPO_ROOT / "crds"


# --------------------------------------------------------------------------- schema


def _rules(rules: tuple[CEL, ...]) -> list[dict[str, str]]:
    out = []
    for r in rules:
        item = {"rule": r.rule, "message": r.message}
        if r.field:
            item["fieldPath"] = r.field
        out.append(item)
    return out


def _split_annotated(tp: Any) -> tuple[Any, list[Any]]:
    meta: list[Any] = []
    while typing.get_origin(tp) is typing.Annotated:
        tp, *extra = typing.get_args(tp)
        for m in extra:
            meta.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    return tp, meta


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _apply_constraints(node: dict[str, Any], meta: list[Any]) -> None:
    length_keys = ("minItems", "maxItems") if node.get("type") == "array" else ("minLength", "maxLength")
    for m in meta:
        for attr, key in (("ge", "minimum"), ("le", "maximum")):
            if getattr(m, attr, None) is not None:
                node[key] = getattr(m, attr)
        for attr, key, flag in (("gt", "minimum", "exclusiveMinimum"), ("lt", "maximum", "exclusiveMaximum")):
            if getattr(m, attr, None) is not None:
                node[key] = getattr(m, attr)
                node[flag] = True
        if getattr(m, "min_length", None) is not None:
            node[length_keys[0]] = m.min_length
        if getattr(m, "max_length", None) is not None:
            node[length_keys[1]] = m.max_length
        if getattr(m, "pattern", None) is not None:
            node["pattern"] = m.pattern
    if node.get("type") == "number":
        for key in ("minimum", "maximum"):
            if key in node:
                node[key] = float(node[key])


def schema_for_type(tp: Any, meta: list[Any]) -> dict[str, Any]:
    """The OpenAPI node of one annotation (with its constraint metadata)."""
    tp, more = _split_annotated(_strip_optional(tp))
    meta = meta + more
    tp = _strip_optional(tp)
    if any(isinstance(m, QuantityMarker) for m in meta):
        node: dict[str, Any] = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
        from cpt_operator.api.common import QUANTITY

        node["pattern"] = QUANTITY
        return node
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        values = list(typing.get_args(tp))
        kind = "integer" if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else "string"
        return {"type": kind, "enum": values}
    if origin is list:
        (item,) = typing.get_args(tp)
        node = {"type": "array", "items": schema_for_type(item, [])}
        if isinstance(item, type) and issubclass(item, Condition):
            node["x-kubernetes-list-type"] = "map"
            node["x-kubernetes-list-map-keys"] = ["type"]
        _apply_constraints(node, meta)
        return node
    if origin is dict:
        _, value = typing.get_args(tp)
        return {"type": "object", "additionalProperties": schema_for_type(value, [])}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return schema_for_model(tp)
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if tp in simple:
        node = {"type": simple[tp]}
        _apply_constraints(node, meta)
        return node
    raise TypeError(f"crdgen: no OpenAPI mapping for {tp!r}")


def _default_of(info: FieldInfo) -> Any:
    if info.default is not PydanticUndefined and info.default is not None:
        return info.default
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            # The whole default object, not `{}`: the API server checks a default against the
            # object's CEL rules as written, before nested defaults apply, so `{}` fails every
            # rule that reads a field ("no such key") and the CRD is refused.
            return value.model_dump(mode="json", by_alias=True, exclude_none=True)
        return value if value else None
    return None


def schema_for_model(model: type[BaseModel]) -> dict[str, Any]:
    """The structural object node of a model, with descriptions, defaults and CEL rules."""
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        alias = info.alias or name
        node = schema_for_type(info.annotation, list(info.metadata))
        if not info.description:
            raise ValueError(f"crdgen: {model.__name__}.{name} has no description")
        # The field's own description wins over its model's docstring.
        node = {"description": info.description, **{k: v for k, v in node.items() if k != "description"}}
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if "format" in extra:
            node["format"] = extra["format"]
        default = _default_of(info)
        if default is not None:
            if node.get("type") == "number" and isinstance(default, int):
                default = float(default)
            node["default"] = default
        if info.is_required():
            required.append(alias)
        props[alias] = node
    out: dict[str, Any] = {"type": "object"}
    if model.__doc__:
        out["description"] = " ".join(model.__doc__.split())
    out["properties"] = props
    if required:
        out["required"] = required
    rules = getattr(model, "cel_rules", ())
    if rules:
        out["x-kubernetes-validations"] = _rules(rules)
    return out


def status_schema(info: KindInfo) -> dict[str, Any]:
    node = schema_for_model(info.status)
    # Kopf may keep per-handler progress here; declaring it keeps the API server from pruning it.
    node["properties"]["kopf"] = {
        "description": "Internal progress of the operator framework (Kopf). Not for tenants.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    return node


def build_crd(info: KindInfo) -> dict[str, Any]:
    """The whole CustomResourceDefinition object of one kind."""
    root: dict[str, Any] = {
        "description": info.description,
        "type": "object",
        "properties": {
            "apiVersion": {"description": "APIVersion of this object: cpt.dev/v1alpha1.", "type": "string"},
            "kind": {"description": f"Kind of this object: {info.kind}.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": {**schema_for_model(info.spec), "description": " ".join((info.spec.__doc__ or "").split())},
            "status": status_schema(info),
        },
        "required": ["spec"],
    }
    if info.root_rules:
        root["x-kubernetes-validations"] = _rules(info.root_rules)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.crd_name, "labels": {"app.kubernetes.io/part-of": "cpt-operator"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(info.printer_columns),
                }
            ],
        },
    }


def render_crd_yaml(info: KindInfo) -> str:
    header = "# Generated by `python -m cpt_operator.api.crdgen` from operator/cpt_operator/api/. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(info), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that crds/ is up to date")
    parser.add_argument("--out", type=Path, default=CRD_DIR, help="output folder (default: crds/)")
    args = parser.parse_args(argv)
    stale = []
    for info in KINDS:
        path = args.out / info.file_name
        text = render_crd_yaml(info)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run `python -m cpt_operator.api.crdgen`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
