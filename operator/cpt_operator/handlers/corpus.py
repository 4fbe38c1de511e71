"""Reconcile a Corpus: its curation ConfigMap and Indexed Job, and status from the Job.

The spec is frozen once the Job exists (a Job's pod template is immutable and a corpus
changing under running CPTRuns would break their data position): a changed spec is
refused with a condition; a new Corpus name curates anew.
"""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from cpt_operator import conditions as c
from cpt_operator import kube
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.decide.checks import check_curation
from cpt_operator.decide.corpus_phase import corpus_job_state, parse_curation_report
from cpt_operator.handlers.common import check_secret, conditions_with, ensure_object, retry_later, write_status
from cpt_operator.handlers.context import OperatorContext, context_of
from cpt_operator.handlers.indexes import first
from cpt_operator.render import names
from cpt_operator.render.configmap import CURATION_CONFIG_KEY, digest
from cpt_operator.render.curation_job import corpus_credentials, render_curation_configmap, render_curation_job
from cpt_operator.render.locations import location_uri
from cpt_operator.render.pod import ConflictingCredentials

COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


async def read_curation_report(ctx: OperatorContext, namespace: str, corpus: str) -> dict[str, Any]:
    """Status fields from the termination message of the curation pod of index 0 ({} if none)."""
    pods = await ctx.kube.list(kube.PODS, namespace, {names.LABEL_CORPUS: corpus, names.LABEL_MANAGED_BY: names.MANAGED_BY})
    pods.sort(key=lambda p: ((p.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION, "0") != "0")
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((cs.get("state") or {}).get("terminated") or {}).get("message")
            report = parse_curation_report(message)
            if report:
                return report
    return {}


async def reconcile_corpus(
    body: Any, spec: Any, status: Any, meta: Any, namespace: str, name: str, uid: str, patch: Any, memo: Any,
    logger: Any, jobs_by_corpus: Any, retry: int = 0, **_: Any,
) -> None:  # fmt: skip
    ctx = context_of(memo)
    now = c.now_rfc3339()
    generation = meta.get("generation")
    current = dict(status or {})
    updates: list[tuple[str, Any, str, str]] = []
    desired: dict[str, Any] = {"observedGeneration": generation}

    def finish(phase: str) -> None:
        if current.get("phase") == "Ready" and phase != "Ready":
            phase = "Ready"  # a curated corpus stays usable; a refused spec change only adds a condition
        desired["phase"] = phase
        desired["conditions"] = conditions_with(list(current.get("conditions") or []), updates, generation, now)
        write_status(patch, current, desired)

    try:
        names.check_name(name, "Corpus name")
        corpus = CorpusSpec.model_validate(dict(spec))
        secret_ref = corpus_credentials(corpus)
    except (ValidationError, names.InvalidName, ConflictingCredentials) as exc:
        reason = c.CONFLICTING_CREDENTIALS if isinstance(exc, ConflictingCredentials) else c.INVALID_SPEC
        updates += [(c.ACCEPTED, False, reason, str(exc)), (c.READY, False, reason, str(exc))]
        finish(current.get("phase") or "Pending")
        return

    configmap = render_curation_configmap(namespace, name, uid, corpus, ctx.settings)
    config_text = configmap["data"][CURATION_CONFIG_KEY]
    job_body = first(jobs_by_corpus, (namespace, name))
    if job_body is None:
        job_body = await ctx.kube.get(kube.JOBS, namespace, names.curation_job_name(name)) if current.get("jobName") else None

    if job_body is None:
        if current.get("phase") == "Ready":  # curated; its Job was cleaned up: nothing to redo
            finish("Ready")
            return
        # What the platform allows (namespace, parallelism, GPUs, pool): refused, no Job.
        pool, refusal = check_curation(corpus, namespace, ctx.settings)
        if refusal is not None:
            updates += [(c.ACCEPTED, False, refusal.reason, refusal.message), (c.READY, False, refusal.reason, refusal.message)]
            finish(current.get("phase") or "Pending")
            return
        missing = await check_secret(ctx, namespace, secret_ref)
        if missing is not None:
            updates += [(c.ACCEPTED, True, c.SPEC_ACCEPTED, "the spec is valid"), (c.READY, False, missing.reason, missing.message)]
            finish("Pending")
            raise retry_later(ctx, missing, retry)
        await ensure_object(ctx, kube.CONFIGMAPS, configmap)
        job_body, created = await ensure_object(
            ctx, kube.JOBS, render_curation_job(namespace, name, uid, corpus, ctx.settings, config_text, pool)
        )
        if created:
            logger.info("created curation Job %s/%s", namespace, job_body["metadata"]["name"])
            kopf.info(body, reason="CurationJobCreated", message=f"created Job {job_body['metadata']['name']}")

    job_meta = job_body.get("metadata") or {}
    stored = (job_meta.get("annotations") or {}).get(names.ANNOTATION_CONFIG_DIGEST)
    if stored is not None and stored != digest(config_text):
        updates.append((c.ACCEPTED, False, c.IMMUTABLE_FIELD_CHANGED,
                        "a Corpus's spec cannot change once curation started; revert it or create a new Corpus"))  # fmt: skip
    else:
        updates.append((c.ACCEPTED, True, c.SPEC_ACCEPTED, "the spec is valid"))
    completions = int((job_body.get("spec") or {}).get("completions") or corpus.parallelism)
    state = corpus_job_state(job_body.get("status"), completions)
    desired["jobName"] = job_meta.get("name")
    if state.phase == "Ready":
        if current.get("phase") != "Ready":
            desired.update(await read_curation_report(ctx, namespace, name))
            desired.setdefault("outputUri", location_uri(corpus.output, ctx.settings.pvc_mount_root))
        updates += [(c.READY, True, c.CURATION_SUCCEEDED, state.message), (c.FAILED, False, c.CURATION_SUCCEEDED, "")]
    elif state.phase == "Failed":
        updates += [(c.READY, False, c.CURATION_FAILED, state.message), (c.FAILED, True, c.CURATION_FAILED, state.message)]
    else:
        updates += [(c.READY, False, c.CURATING, state.message), (c.FAILED, False, c.CURATING, "")]
    finish(state.phase)
