"""The one list of API permissions the operator needs (least privilege).

The Helm chart renders its ClusterRole (or per-namespace Roles) from `RULES`, and a test
checks that every request the operator makes against the emulated API server, Kopf's
own included, is covered. Secrets: `get` only, to check that a referenced Secret and
its keys exist; their values are never copied (pods read them via secretKeyRef).
"""

from __future__ import annotations

from typing import NamedTuple


class Rule(NamedTuple):
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    # Reaches a tenant's own data or creates workloads in its namespace (Secrets, ConfigMaps,
    # pods, Jobs, PyTorchJobs, Workloads, Events): granted only in the namespaces the platform
    # opts in (chart value rbac.tenantNamespaces), never cluster-wide by default.
    tenant: bool = False


RULES: tuple[Rule, ...] = (
    # Our kinds: watched by Kopf; patched for Kopf's annotations, finalizer and touches.
    Rule(("cpt.dev",), ("cptruns", "corpora", "checkpointpolicies"), ("get", "list", "watch", "patch")),
    Rule(("cpt.dev",), ("cptruns/status", "corpora/status"), ("get", "patch")),
    # ownerReferences with blockOwnerDeletion need update on the owner's finalizers.
    Rule(("cpt.dev",), ("cptruns/finalizers", "corpora/finalizers"), ("update",)),
    # Children: watched everywhere (the watch caches), written only where the platform allows.
    Rule(("kubeflow.org",), ("pytorchjobs",), ("get", "list", "watch")),
    Rule(("batch",), ("jobs",), ("get", "list", "watch")),
    Rule(("kubeflow.org",), ("pytorchjobs",), ("create", "patch", "delete"), tenant=True),
    Rule(("batch",), ("jobs",), ("create",), tenant=True),
    Rule(("",), ("configmaps",), ("get", "create", "patch"), tenant=True),
    # Kueue: a stop that sticks deactivates the job's Workload (docs/kueue.md).
    Rule(("kueue.x-k8s.io",), ("workloads",), ("list", "patch"), tenant=True),
    # Curation reports: the termination message of a finished curation pod.
    Rule(("",), ("pods",), ("list",), tenant=True),
    Rule(("",), ("secrets",), ("get",), tenant=True),
    # Kopf: Events on tenants' objects, CRD and namespace discovery, peering of replicas.
    Rule(("",), ("events",), ("create",), tenant=True),
    Rule(("",), ("namespaces",), ("list", "watch")),
    Rule(("apiextensions.k8s.io",), ("customresourcedefinitions",), ("list", "watch")),
    Rule(("kopf.dev",), ("clusterkopfpeerings", "kopfpeerings"), ("get", "list", "watch", "patch")),
)


def allows(group: str, resource: str, verb: str) -> bool:
    """Whether RULES grant `verb` on `resource` (`plural` or `plural/subresource`) of `group`."""
    return any(group in r.api_groups and resource in r.resources and verb in r.verbs for r in RULES)
