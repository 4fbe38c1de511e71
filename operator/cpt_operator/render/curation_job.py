"""Render a Corpus into its curation ConfigMap and batch/v1 Indexed Job (pure)."""

from __future__ import annotations

from typing import Any

from cpt_operator.api.common import API_VERSION, SecretReference
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.render import names
from cpt_operator.render.configmap import CURATION_CONFIG_KEY, config_json, digest, render_configmap
from cpt_operator.render.pod import (
    CONFIG_DIR,
    container_security_context,
    credential_env,
    credentials_secret,
    pod_identity,
    scratch_env,
    volumes_and_mounts,
)
from cpt_operator.render.trainer_config import render_curation_config
from cpt_operator.settings import NodePool, OperatorSettings

TERMINATION_MESSAGE_PATH = "/dev/termination-log"


def corpus_locations(spec: CorpusSpec) -> list[Any]:
    return [*(s.location for s in spec.sources), spec.tokenizer, spec.output, spec.curation.quality_filter.reference_model]


def corpus_credentials(spec: CorpusSpec) -> SecretReference | None:
    return credentials_secret(*corpus_locations(spec))


def render_curation_configmap(namespace: str, name: str, uid: str, spec: CorpusSpec, settings: OperatorSettings) -> dict[str, Any]:
    config = render_curation_config(namespace, name, spec, uid=uid, pvc_root=settings.pvc_mount_root)
    return render_configmap(
        names.curation_configmap_name(name),
        namespace,
        CURATION_CONFIG_KEY,
        config_json(config),
        names.corpus_labels(namespace, name),
        names.owner_reference(API_VERSION, "Corpus", name, uid),
    )


def render_curation_job(
    namespace: str, name: str, uid: str, spec: CorpusSpec, settings: OperatorSettings, config_text: str,
    pool: NodePool | None = None,
) -> dict[str, Any]:
    """An Indexed Job: `parallelism` pods, each curating its slice ($JOB_COMPLETION_INDEX);
    worker 0 also reduces and writes the small status JSON to its termination message.

    `pool` (decide.checks.check_curation: the curation GPU pool, for GPU pods) gives the pods its
    node selector, tolerations and GPU resource; `settings.curation.queue_name` labels the Job for
    Kueue, created suspended (Kueue un-suspends it on admission)."""
    res = spec.resources
    volumes, mounts = volumes_and_mounts(names.curation_configmap_name(name), corpus_locations(spec), settings.pvc_mount_root, shm=False)
    limits: dict[str, Any] = {"cpu": str(res.cpu), "memory": str(res.memory)}
    if res.gpu:
        limits[pool.gpu_resource if pool is not None else "nvidia.com/gpu"] = str(res.gpu)
    labels = names.corpus_labels(namespace, name)
    job_labels = dict(labels)
    queue = settings.curation.queue_name
    if queue:
        job_labels[names.KUEUE_QUEUE_LABEL] = queue
    placement: dict[str, Any] = {}
    if pool is not None:
        placement = {"nodeSelector": dict(pool.node_selector), "tolerations": [dict(t) for t in pool.tolerations]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": names.curation_job_name(name),
            "namespace": namespace,
            "labels": job_labels,
            "annotations": {names.ANNOTATION_CONFIG_DIGEST: digest(config_text)},
            "ownerReferences": [names.owner_reference(API_VERSION, "Corpus", name, uid)],
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.parallelism,
            "parallelism": spec.parallelism,
            "backoffLimit": settings.backoff_limit,
            **({"suspend": True} if queue else {}),
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    **pod_identity(restart_policy="Never"),
                    **placement,
                    "containers": [
                        {
                            "name": "curate",
                            "image": settings.trainer_image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["cpt-trainer", "curate", "--config", f"{CONFIG_DIR}/{CURATION_CONFIG_KEY}"],
                            "env": [
                                *scratch_env(),
                                {"name": "CPT_CORPUS_NAMESPACE", "value": namespace},
                                {"name": "CPT_CORPUS_NAME", "value": name},
                                *credential_env(corpus_credentials(spec)),
                            ],
                            "resources": {"requests": dict(limits), "limits": dict(limits)},
                            "securityContext": container_security_context(),
                            "terminationMessagePath": TERMINATION_MESSAGE_PATH,
                            "terminationMessagePolicy": "File",
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }
