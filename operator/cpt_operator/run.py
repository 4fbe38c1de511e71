"""`cpt-operator`: run the Kopf operator with our settings.

    cpt-operator [--settings FILE] [--namespace NS ...| --all-namespaces] [--standalone]
                 [--liveness URL] [--priority N] [--verbose]

Watches every namespace unless namespaces are given (flags or settings.watch_namespaces).
With two replicas, Kopf's peering keeps exactly one active: the one with the higher
priority (by default derived from the pod name, so replicas differ).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import socket
import sys
import zlib

DEFAULT_LIVENESS = "http://0.0.0.0:8081/healthz"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpt-operator", description=__doc__.splitlines()[0])
    p.add_argument("--settings", help="operator settings YAML (default: $CPT_OPERATOR_SETTINGS_FILE)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable; globs allowed)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default when none given)")
    p.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    p.add_argument("--priority", type=int, default=None, help="peering priority (default: from the pod name)")
    p.add_argument("--liveness", default=DEFAULT_LIVENESS, help=f"liveness endpoint (default {DEFAULT_LIVENESS}; '' disables)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


def default_priority() -> int:
    """Distinct per replica (pod names differ), stable across restarts of the same pod."""
    return zlib.crc32((os.environ.get("POD_NAME") or socket.gethostname()).encode()) % 10_000


async def run_operator(args: argparse.Namespace) -> None:
    import kopf

    import cpt_operator.main  # noqa: F401  (registers the handlers)
    from cpt_operator.handlers.context import OperatorContext
    from cpt_operator.kube import ClusterConnection, KubeClient
    from cpt_operator.settings import load_settings

    settings = load_settings(args.settings)
    namespaces = list(args.namespace) or list(settings.watch_namespaces)
    clusterwide = args.all_namespaces or not namespaces
    settings.watch_namespaces = [] if clusterwide else namespaces  # the control loop serves what Kopf serves
    connection = ClusterConnection.detect()
    identity = os.environ.get("POD_NAME") or f"{getpass.getuser()}@{socket.gethostname()}/{os.getpid()}"
    ctx = OperatorContext(settings=settings, connection=connection, kube=KubeClient(connection), identity=identity)
    await kopf.operator(
        identity=identity,  # type: ignore[arg-type]  (kopf's Identity is a NewType of str)
        clusterwide=clusterwide,
        namespaces=[] if clusterwide else namespaces,
        standalone=args.standalone,
        priority=args.priority if args.priority is not None else default_priority(),
        liveness_endpoint=args.liveness or None,
        memo=kopf.Memo(ctx=ctx),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run_operator(args))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
