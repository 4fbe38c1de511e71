"""Building blocks shared by the three kinds: the model base class, CEL rules, names,
quantities, storage locations, references and conditions.

The models are the single source of the API: `crdgen` turns them into the CRD YAML under
`crds/`, and `validation` checks resources against that schema (CEL included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "cpt.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "cpt"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes resource quantities (e.g. 4, 500m, 64Gi, 1.5e3): one number (not "...", not "1.2.3").
QUANTITY = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
# One path segment: may not start with '.', so '.' and '..' (and hidden names) never pass.
_SEGMENT = r"[A-Za-z0-9_=+-][A-Za-z0-9_.=+-]*"
# A relative path inside a volume or bucket: no leading '/', no '..' segment, no odd characters.
RELATIVE_PATH = rf"^({_SEGMENT})(/{_SEGMENT})*/?$"
OPTIONAL_RELATIVE_PATH = rf"^$|^({_SEGMENT})(/{_SEGMENT})*/?$"
S3_URI = rf"^s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9](/{_SEGMENT})*/?$"
# S3's bucket naming rules beyond S3_URI's characters and length: dot-separated labels (no
# '..', '.-', '-.'), not an IP address. A CEL rule (the length bound needs S3_URI as well).
S3_BUCKET_LABELS = "^s3://[a-z0-9]([a-z0-9-]*[a-z0-9])?([.][a-z0-9]([a-z0-9-]*[a-z0-9])?)*(/|$)"
S3_BUCKET_IP = "^s3://[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+(/|$)"
ABSOLUTE_PATH = rf"^(/{_SEGMENT})+/?$"


@dataclass(frozen=True)
class CEL:
    """One `x-kubernetes-validations` rule on the object node of a model.

    `field` is the rule's `fieldPath` (relative to that node, e.g. `.minLearningRate`):
    the field a tenant must change; `message` names it too.
    """

    rule: str
    message: str
    field: str | None = None


class APIModel(BaseModel):
    """Base of every spec/status model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
    )
    # Cross-field rules of this object node, emitted as CEL into the CRD.
    cel_rules: ClassVar[tuple[CEL, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, unset optionals omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(APIModel):
    """Status is written by the operator; tolerate fields a newer operator added."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)


def _check_quantity(value: str | int | float) -> str:
    text = str(value)
    if not re.match(QUANTITY, text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
    return text


class QuantityMarker:
    """Marks a field as a Kubernetes quantity (int-or-string with a pattern) for crdgen."""


Quantity = Annotated[str | int, AfterValidator(_check_quantity), QuantityMarker()]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)]
SubdomainName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]


def parse_quantity(value: str | int) -> float:
    """A quantity in base units (bytes, cores)."""
    units = {
        "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    }  # fmt: skip
    match = re.match(QUANTITY, str(value))
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, suffix = match.groups()
    if suffix and suffix[0] in "eE":
        return float(number + suffix)
    return float(number) * units.get(suffix or "", 1.0)


# --------------------------------------------------------------------------- references


class LocalObjectReference(APIModel):
    """A reference to an object in the same namespace (cross-namespace references do not exist)."""

    name: Name = Field(description="Name of the object, in this resource's own namespace.")


class SecretReference(APIModel):
    """S3 credentials in a Secret of the tenant's own namespace, read as environment variables."""

    name: Name = Field(description="Name of the Secret, in this resource's own namespace.")
    access_key_id_key: str = Field(
        "AWS_ACCESS_KEY_ID", max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in the Secret holding the access key ID.",
    )  # fmt: skip
    secret_access_key_key: str = Field(
        "AWS_SECRET_ACCESS_KEY", max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in the Secret holding the secret access key.",
    )  # fmt: skip


# --------------------------------------------------------------------------- locations


class S3Location(APIModel):
    """An S3 (or S3-compatible) prefix."""

    uri: str = Field(max_length=1024, pattern=S3_URI, description="s3://bucket/prefix (a prefix below a bucket).")
    endpoint: str | None = Field(
        None, max_length=512, pattern=r"^https?://[A-Za-z0-9.:\[\]-]+(/.*)?$",
        description="Endpoint URL of an S3-compatible server; omit for AWS S3.",
    )  # fmt: skip
    region: str | None = Field(None, max_length=64, pattern=r"^[a-z0-9-]+$", description="Region of the bucket.")
    credentials_secret: SecretReference | None = Field(
        None, description="Secret with the credentials; omit to use the pod's own identity (IRSA, workload identity)."
    )

    cel_rules = (
        CEL(
            f"self.uri.matches('{S3_BUCKET_LABELS}') && !self.uri.matches('{S3_BUCKET_IP}')",
            "uri must name a valid S3 bucket: labels of lower-case letters, digits and '-' separated by single dots "
            "(no '..', '.-' or '-.'), not an IP address",
            ".uri",
        ),
    )


class PVCLocation(APIModel):
    """A folder on a PersistentVolumeClaim in the same namespace."""

    claim_name: Name = Field(description="Name of the PersistentVolumeClaim, in this resource's own namespace.")
    path: str = Field("", max_length=1024, pattern=OPTIONAL_RELATIVE_PATH, description="Folder below the volume's root.")


class LocalLocation(APIModel):
    """A path on the machine or image itself (local mode, or data baked into the trainer image)."""

    path: str = Field(max_length=1024, pattern=ABSOLUTE_PATH, description="Absolute path.")


class Location(APIModel):
    """Where data lives: exactly one of `s3`, `pvc`, `local`."""

    s3: S3Location | None = Field(None, description="An S3 prefix.")
    pvc: PVCLocation | None = Field(None, description="A folder on a PersistentVolumeClaim.")
    local: LocalLocation | None = Field(None, description="A local path (local mode or inside the image).")

    cel_rules = (
        CEL(
            "[has(self.s3), has(self.pvc), has(self.local)].filter(x, x).size() == 1",
            "exactly one of s3, pvc or local must be set",
        ),
    )


class StorageLocation(APIModel):
    """Where outputs are written: exactly one of `s3` or `pvc`."""

    s3: S3Location | None = Field(None, description="An S3 prefix.")
    pvc: PVCLocation | None = Field(None, description="A folder on a PersistentVolumeClaim.")

    cel_rules = (CEL("has(self.s3) != has(self.pvc)", "exactly one storage backend (s3 or pvc) must be set"),)


# --------------------------------------------------------------------------- status


class Condition(StatusModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(max_length=316, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$", description="Type of the condition, e.g. Ready.")  # noqa: E501
    status: Literal["True", "False", "Unknown"] = Field(description="Status of the condition.")
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", description="Machine-readable CamelCase reason.")  # noqa: E501
    message: str = Field("", max_length=32768, description="Human-readable message a tenant can act on.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).", json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the condition was set for.")


class Toleration(APIModel):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(None, max_length=316, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, max_length=63, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(None, description="Taint effect; empty matches all.")
    toleration_seconds: int | None = Field(None, ge=0, description="NoExecute only: how long the pod stays bound.")


# --------------------------------------------------------------------------- overlap


def location_key(location: Location | StorageLocation, namespace: str = "") -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(store, path segments) of a location: two locations overlap when they share the store
    and one's segments start the other's. PVCs are namespaced, S3 buckets are not."""
    if location.s3 is not None:
        rest = location.s3.uri[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        return ("s3", location.s3.endpoint or "", bucket), tuple(p for p in prefix.split("/") if p)
    if location.pvc is not None:
        return ("pvc", namespace, location.pvc.claim_name), tuple(p for p in location.pvc.path.split("/") if p)
    local = getattr(location, "local", None)
    if local is not None:
        return ("local",), tuple(p for p in local.path.split("/") if p)
    return None


def describe_location(location: Location | StorageLocation) -> str:
    if location.s3 is not None:
        return location.s3.uri
    if location.pvc is not None:
        return f"pvc {location.pvc.claim_name}:/{location.pvc.path}"
    local = getattr(location, "local", None)
    return local.path if local is not None else "?"


def overlap(a: Location | StorageLocation, b: Location | StorageLocation, namespace_a: str = "", namespace_b: str = "") -> str | None:
    """'equals', 'inside' (a lies inside b), 'contains' (b lies inside a), or None."""
    ka, kb = location_key(a, namespace_a), location_key(b, namespace_b)
    if ka is None or kb is None or ka[0] != kb[0]:
        return None
    pa, pb = ka[1], kb[1]
    if pa == pb:
        return "equals"
    if pa[: len(pb)] == pb:
        return "inside"
    if pb[: len(pa)] == pa:
        return "contains"
    return None
