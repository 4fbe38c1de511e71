"""Names and labels of the objects the operator creates, derived from tenant-chosen names.

Tenant names are checked to be DNS-1123 labels before they get here (`check_name`);
derived names stay unique and within Kubernetes' limits by truncating and appending a
hash of the full untruncated name, so two long names that share a prefix never collide.
"""

from __future__ import annotations

import hashlib
import re

# The keys live one layer below render/ and decide/ (cpt_operator.labels); re-exported here.
from cpt_operator.labels import (  # noqa: F401
    ANNOTATION_CHECKPOINT_URI,
    ANNOTATION_CONFIG_DIGEST,
    ANNOTATION_DELETE_WITH_RUN,
    ANNOTATION_SPEC_DIGEST,
    KUEUE_JOB_UID_LABEL,
    KUEUE_QUEUE_LABEL,
    LABEL_COMPONENT,
    LABEL_CORPUS,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_NAMESPACE,
    LABEL_PART_OF,
    LABEL_RUN,
    LABEL_RUN_UID,
    MANAGED_BY,
)

DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 63
# PyTorchJob replica pods and their headless Services are named
# <job>-master-0 / <job>-worker-<i> and Services need DNS-1035 labels (<= 63, start
# with a letter): leave room for "-worker-511".
MAX_PYTORCHJOB_NAME = 48
# Indexed Job pods get the hostname <job>-<index>: leave room for the index.
MAX_JOB_NAME = 52
HASH_LENGTH = 8



class InvalidName(ValueError):
    """A tenant-supplied name that cannot become part of an object name."""


def check_name(name: str, what: str = "name") -> str:
    """`name` if it is a DNS-1123 label (<= 63, lower case, digits, '-'), else InvalidName."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not DNS1123_LABEL_RE.match(name):
        raise InvalidName(f"{what} {name!r} must be a DNS-1123 label (lower case letters, digits, '-', at most 63)")
    return name


def short_hash(text: str, length: int = HASH_LENGTH) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def derived_name(base: str, suffix: str = "", max_len: int = MAX_NAME, must_start_with_letter: bool = False) -> str:
    """`base + suffix` when it fits in `max_len` (and starts with a letter where required);
    otherwise a truncated base, a hash of the full base, then the suffix."""
    check_name(base)
    name = base + suffix
    if len(name) <= max_len and (not must_start_with_letter or name[0].isalpha()):
        return name
    prefix = "" if base[0].isalpha() or not must_start_with_letter else "r-"
    room = max_len - len(suffix) - HASH_LENGTH - 1 - len(prefix)
    if room < 1:
        raise InvalidName(f"suffix {suffix!r} leaves no room in {max_len} characters")
    head = (prefix + base[:room]).rstrip("-")
    return f"{head}-{short_hash(base)}{suffix}"


def pytorchjob_name(run: str) -> str:
    """The run's PyTorchJob (the run's own name when it fits)."""
    return derived_name(run, "", MAX_PYTORCHJOB_NAME, must_start_with_letter=True)


def trainer_configmap_name(run: str) -> str:
    return derived_name(run, "-trainer-config", MAX_NAME)


def retain_configmap_name(run: str) -> str:
    """The operator's retain list for a run's PVC checkpoints (the trainer pod mounts it)."""
    return derived_name(run, "-retain", MAX_NAME)


def cleanup_job_name(run: str, uid: str) -> str:
    """The Job deleting a run's PVC checkpoints with it (deleteWithRun). Named with the run's uid:
    a leftover Job of an earlier run of the same name is never taken for this run's."""
    return derived_name(run, f"-cleanup-{short_hash(uid, 6)}", MAX_JOB_NAME, must_start_with_letter=True)


def curation_job_name(corpus: str) -> str:
    return derived_name(corpus, "-curate", MAX_JOB_NAME, must_start_with_letter=True)


def curation_configmap_name(corpus: str) -> str:
    return derived_name(corpus, "-curation-config", MAX_NAME)


def run_labels(namespace: str, run: str, component: str = "trainer") -> dict[str, str]:
    """Labels identifying tenant and run on every object of a CPTRun."""
    return {
        LABEL_NAME: "cpt-trainer",
        LABEL_INSTANCE: run,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: "cpt-operator",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RUN: run,
        LABEL_NAMESPACE: namespace,
    }


def corpus_labels(namespace: str, corpus: str) -> dict[str, str]:
    """Labels identifying tenant and corpus on every object of a Corpus."""
    return {
        LABEL_NAME: "cpt-curation",
        LABEL_INSTANCE: corpus,
        LABEL_COMPONENT: "curation",
        LABEL_PART_OF: "cpt-operator",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_CORPUS: corpus,
        LABEL_NAMESPACE: namespace,
    }


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict[str, object]:
    """A controller owner reference: the garbage collector deletes the child with its owner."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
