"""Kopf wiring: every decorated function delegates in one line to `cpt_operator.handlers`.

Importing this module registers the handlers in Kopf's default registry;
`cpt_operator.run` starts the operator.
"""

from __future__ import annotations

from typing import Any

import kopf

from cpt_operator import kube
from cpt_operator.api.common import GROUP, VERSION
from cpt_operator.handlers import control, corpus, indexes, run, startup, touch
from cpt_operator.handlers.context import context_of, login_info
from cpt_operator.render.names import LABEL_CORPUS, LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY

OURS = {LABEL_MANAGED_BY: MANAGED_BY}
DELETION_RETRIES = 30  # about 5 min of waits (a cleanup Job pulls its image); then the finalizer is released anyway
DELETION_BACKOFF = 15.0


# --------------------------------------------------------------------------- operator


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    startup.configure_kopf(settings, context_of(memo))


@kopf.on.login()
def login(memo: Any, **_: Any) -> Any:
    return login_info(context_of(memo))


@kopf.on.startup()
async def start_control_loop(memo: Any, **_: Any) -> None:
    memo.control_stop, memo.control_task = control.start(context_of(memo))


@kopf.on.cleanup()
async def close_client(memo: Any, **_: Any) -> None:
    await control.stop(getattr(memo, "control_stop", None), getattr(memo, "control_task", None))
    await context_of(memo).kube.close()


# --------------------------------------------------------------------------- watch caches


@kopf.index(GROUP, VERSION, "corpora")
def corpora_by_name(namespace: str, name: str, body: Any, **_: Any) -> Any:
    return indexes.corpus_entry(namespace, name, body)


@kopf.index(GROUP, VERSION, "checkpointpolicies")
def policies_by_name(namespace: str, name: str, body: Any, **_: Any) -> Any:
    return indexes.policy_entry(namespace, name, body)


@kopf.index(GROUP, VERSION, "cptruns")
def runs_by_dependency(namespace: str, name: str, spec: Any, **_: Any) -> Any:
    return indexes.run_dependency_entries(namespace, name, spec)


@kopf.index("kubeflow.org", "v1", "pytorchjobs", labels=OURS)
def pytorchjobs_by_run(namespace: str, labels: Any, body: Any, **_: Any) -> Any:
    return indexes.child_entry(namespace, labels, body, LABEL_RUN)


@kopf.index("batch", "v1", "jobs", labels=OURS)
def jobs_by_corpus(namespace: str, labels: Any, body: Any, **_: Any) -> Any:
    return indexes.child_entry(namespace, labels, body, LABEL_CORPUS)


# --------------------------------------------------------------------------- CPTRun


@kopf.on.resume(GROUP, VERSION, "cptruns")
@kopf.on.create(GROUP, VERSION, "cptruns")
@kopf.on.update(GROUP, VERSION, "cptruns")
async def reconcile_cptrun(**kwargs: Any) -> None:
    await run.reconcile_run(**kwargs)


@kopf.on.delete(GROUP, VERSION, "cptruns", when=run.deletes_checkpoints, retries=DELETION_RETRIES, backoff=DELETION_BACKOFF)
async def delete_cptrun(**kwargs: Any) -> None:
    await run.delete_run(**kwargs)


@kopf.on.event("kubeflow.org", "v1", "pytorchjobs", labels=OURS)
async def pytorchjob_changed(**kwargs: Any) -> None:
    await touch.touch_owner(owner_label=LABEL_RUN, owner=kube.CPTRUNS, **kwargs)


@kopf.on.event(GROUP, VERSION, "corpora")
async def corpus_changed(**kwargs: Any) -> None:
    await touch.touch_dependents(kind="Corpus", **kwargs)


@kopf.on.event(GROUP, VERSION, "checkpointpolicies")
async def policy_changed(**kwargs: Any) -> None:
    await touch.touch_dependents(kind="CheckpointPolicy", **kwargs)


# --------------------------------------------------------------------------- Corpus


@kopf.on.resume(GROUP, VERSION, "corpora")
@kopf.on.create(GROUP, VERSION, "corpora")
@kopf.on.update(GROUP, VERSION, "corpora")
async def reconcile_corpus(**kwargs: Any) -> None:
    await corpus.reconcile_corpus(**kwargs)


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
async def job_changed(**kwargs: Any) -> None:
    await touch.touch_owner(owner_label=LABEL_CORPUS, owner=kube.CORPORA, **kwargs)
