"""What every handler needs, carried in Kopf's `memo` (one per operator, copied per object)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cpt_operator.checkpoint_store import RunCheckpointsDeleter
from cpt_operator.handlers.leadership import Peering
from cpt_operator.kube import ClusterConnection, KubeClient
from cpt_operator.settings import OperatorSettings


@dataclass
class Tuning:
    """Kopf-side timings (seconds); tests shorten them."""

    retry_later_base: float = 5.0
    """First delay before re-checking a missing Secret (Secrets are not watched: least privilege)."""
    retry_later_cap: float = 300.0
    """Longest delay between re-checks of a missing Secret."""
    watch_server_timeout: int = 300
    """Watch requests end after this (the API server closes them); Kopf re-lists and re-watches.
    Whole seconds: Kopf sends it as `timeoutSeconds`, which a real API server parses as an
    integer ("300.0" is a 400 Bad Request and no watch ever starts)."""
    peering_name: str = "cpt-operator"
    """ClusterKopfPeering object replicas coordinate through (only one replica is active)."""


@dataclass
class OperatorContext:
    settings: OperatorSettings
    connection: ClusterConnection
    kube: KubeClient
    checkpoint_store: RunCheckpointsDeleter | None = None
    """Deletes a run's checkpoints with it (deleteWithRun); None: handlers.deletion.ClusterCheckpointDeleter."""
    tuning: Tuning = field(default_factory=Tuning)
    identity: str | None = None
    """This replica's peering identity (passed to kopf.operator); None: Kopf picks one."""
    peering: Peering | None = None
    """Filled in at startup when peering is on: the control loop follows Kopf's leader."""
    retain_written: dict[tuple[str, str], str] = field(default_factory=dict)
    """The retain list this process last wrote per (namespace, run): unchanged ones are not rewritten."""
    kueue_workload_version: str | None = None
    """Kueue's Workload API version the server prefers, read once from discovery (job_control)."""


def login_info(ctx: OperatorContext) -> Any:
    """Kopf's connection: the same server and credentials our own client uses."""
    import kopf

    conn = ctx.connection
    token = conn.current_token()
    return kopf.ConnectionInfo(
        server=conn.server, ca_path=conn.ca_path, insecure=conn.insecure or None,
        scheme="Bearer" if token else None, token=token,
        certificate_path=conn.cert_path, private_key_path=conn.key_path,
    )  # fmt: skip


def context_of(memo: Any) -> OperatorContext:
    ctx = getattr(memo, "ctx", None) if not isinstance(memo, dict) else memo.get("ctx")
    if not isinstance(ctx, OperatorContext):
        raise RuntimeError("the operator was started without an OperatorContext in memo.ctx (use cpt_operator.run)")
    return ctx
