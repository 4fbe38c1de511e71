"""`metadata` checked with the API server's own rules (apimachinery's ValidateObjectMeta):
names and namespaces are DNS-1123 labels (our kinds' names also name Jobs, labels and
Services, hence labels, not subdomains), label keys and annotation keys are qualified
names (an optional DNS-1123 subdomain prefix of at most 253 characters, `/`, a name of at
most 63), label values at most 63 characters of the label value syntax, all annotations
together at most 256 KiB; unknown metadata fields are refused (strict field validation).
"""

from __future__ import annotations

import re
from typing import Any

from cpt_operator.api.common import DNS1123_LABEL, DNS1123_SUBDOMAIN
from cpt_operator.api.reading import short_repr
from cpt_operator.api.validation import FieldError

QUALIFIED_NAME = r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
TOTAL_ANNOTATION_BYTES = 256 * 1024
OBJECT_META_FIELDS = frozenset(
    {
        "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
        "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
        "annotations", "ownerReferences", "finalizers", "managedFields",
    }
)  # fmt: skip


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def dns_label_problem(value: str) -> str | None:
    if len(value) > 63:
        return f"must be at most 63 characters (has {len(value):,})"
    if not re.match(DNS1123_LABEL, value):
        return f"{short_repr(value)} must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit"  # noqa: E501
    return None


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a valid label/annotation key (None when it is)."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return f"key {short_repr(key)} has an empty prefix before '/'"
    if prefix:
        if len(prefix) > 253 or not re.match(DNS1123_SUBDOMAIN, prefix):
            return f"the prefix of key {short_repr(key)} must be a DNS-1123 subdomain of at most 253 characters (e.g. example.com)"
    if not name:
        return f"key {short_repr(key)} has an empty name"
    if len(name) > 63:
        return f"the name part of key {short_repr(key)} must be at most 63 characters (has {len(name):,})"
    if not re.match(QUALIFIED_NAME, name):
        return (
            f"key {short_repr(key)}: the name part must consist of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def metadata_errors(meta: Any) -> list[FieldError]:
    """Every problem of an object's metadata, naming the field."""
    if not isinstance(meta, dict):
        return [FieldError("metadata", f"must be an object with at least a name, not {_kind_of(meta)}")]
    errors: list[FieldError] = []
    for key in meta:
        if key not in OBJECT_META_FIELDS:
            errors.append(FieldError(f"metadata.{short_repr(key, 40).strip(chr(39))}", "unknown field"))
    name = meta.get("name")
    if "name" not in meta or name is None or name == "":
        errors.append(FieldError("metadata.name", "required field is missing: every resource needs a name"))
    elif not isinstance(name, str):
        errors.append(FieldError("metadata.name", f"must be a string, not {_kind_of(name)}; quote it"))
    elif problem := dns_label_problem(name):
        errors.append(FieldError("metadata.name", problem))
    namespace = meta.get("namespace")
    if namespace is not None:
        if not isinstance(namespace, str):
            errors.append(FieldError("metadata.namespace", f"must be a string, not {_kind_of(namespace)}"))
        elif problem := dns_label_problem(namespace):
            errors.append(FieldError("metadata.namespace", problem))
    errors += _labels_errors(meta.get("labels"))
    errors += _annotations_errors(meta.get("annotations"))
    return errors


def _labels_errors(labels: Any) -> list[FieldError]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [FieldError("metadata.labels", f"must be an object of strings, not {_kind_of(labels)}")]
    errors = []
    for key, value in labels.items():
        field = f"metadata.labels[{short_repr(key, 80)}]"
        if problem := qualified_name_problem(key):
            errors.append(FieldError(field, problem))
        if not isinstance(value, str):
            errors.append(FieldError(field, f"must be a string, not {_kind_of(value)}; quote it"))
        elif len(value) > 63:
            errors.append(FieldError(field, f"value must be at most 63 characters (has {len(value):,})"))
        elif not re.match(LABEL_VALUE, value):
            errors.append(
                FieldError(
                    field,
                    f"value {short_repr(value)} must be empty or consist of letters, digits, '-', '_' or '.', "
                    "starting and ending with a letter or digit",
                )
            )
    return errors


def _annotations_errors(annotations: Any) -> list[FieldError]:
    if annotations is None:
        return []
    if not isinstance(annotations, dict):
        return [FieldError("metadata.annotations", f"must be an object of strings, not {_kind_of(annotations)}")]
    errors = []
    total = 0
    for key, value in annotations.items():
        field = f"metadata.annotations[{short_repr(key, 80)}]"
        if problem := qualified_name_problem(key):
            errors.append(FieldError(field, problem))
        if not isinstance(value, str):
            errors.append(FieldError(field, f"must be a string, not {_kind_of(value)}; quote it"))
            continue
        total += len(key.encode()) + len(value.encode())
    if total > TOTAL_ANNOTATION_BYTES:
        errors.append(
            FieldError("metadata.annotations", f"may total at most {TOTAL_ANNOTATION_BYTES:,} bytes, keys and values (has {total:,})")
        )
    return errors
