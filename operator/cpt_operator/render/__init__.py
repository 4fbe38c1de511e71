"""Render API objects into the Kubernetes objects the operator creates (pure functions).

`render_all(resources, settings)` is what `cpt plan` prints: the exact ConfigMaps, Jobs
and PyTorchJobs the operator would create for a set of parsed resources.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cpt_operator.api.resources import Resource
    from cpt_operator.settings import OperatorSettings

PLAN_UID = "<uid assigned by the API server>"


class PlanError(ValueError):
    """The resources cannot be rendered (a missing reference, a refused pool or image)."""


def render_all(resources: "list[Resource]", settings: "OperatorSettings") -> list[dict[str, Any]]:
    """The objects the operator would create, in creation order per resource: for each
    Corpus its curation ConfigMap and Job, for each CPTRun its trainer ConfigMap and
    PyTorchJob. References resolve within `resources`, in each resource's own namespace.
    Raises PlanError naming what is missing or refused."""
    from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
    from cpt_operator.api.corpus import CorpusSpec
    from cpt_operator.api.cptrun import CPTRunSpec
    from cpt_operator.decide.checks import (
        check_curation, check_image, check_local_paths, check_pool, check_scheduling, run_local_locations,
    )
    from cpt_operator.decide.suspend import initial_suspend
    from cpt_operator.render.configmap import TRAINER_CONFIG_KEY
    from cpt_operator.render.curation_job import render_curation_configmap, render_curation_job
    from cpt_operator.render.pod import ConflictingCredentials
    from cpt_operator.render.pytorchjob import RunInputs, referenced_corpora, render_pytorchjob, render_trainer_configmap

    by_key = {(r.kind, r.namespace, r.name): r for r in resources}
    out: list[dict[str, Any]] = []
    for r in resources:
        uid = str((r.body.get("metadata") or {}).get("uid") or PLAN_UID)
        try:
            if r.kind == "Corpus":
                assert isinstance(r.spec, CorpusSpec)
                curation_pool, refusal = check_curation(r.spec, r.namespace, settings)
                if refusal is not None:
                    raise PlanError(f"Corpus {r.namespace}/{r.name}: {refusal.message}")
                cm = render_curation_configmap(r.namespace, r.name, uid, r.spec, settings)
                text = next(iter(cm["data"].values()))
                out += [cm, render_curation_job(r.namespace, r.name, uid, r.spec, settings, text, curation_pool)]
            elif r.kind == "CPTRun":
                assert isinstance(r.spec, CPTRunSpec)
                spec = r.spec
                pool, refusal = check_pool(spec, r.namespace, settings)
                refusal = refusal or check_image(spec, settings) or check_local_paths(run_local_locations(spec), settings)
                if refusal is None and pool is not None:
                    refusal = check_scheduling(spec, pool)
                if refusal is not None or pool is None:
                    raise PlanError(f"CPTRun {r.namespace}/{r.name}: {refusal.message if refusal else 'no pool'}")
                policy = by_key.get(("CheckpointPolicy", r.namespace, spec.checkpoint_policy_ref.name))
                if policy is None:
                    raise PlanError(f"CPTRun {r.namespace}/{r.name}: CheckpointPolicy {spec.checkpoint_policy_ref.name!r} not among the resources")  # noqa: E501
                corpora: dict[str, CorpusSpec] = {}
                outputs: dict[str, str] = {}
                for name in referenced_corpora(spec):
                    corpus = by_key.get(("Corpus", r.namespace, name))
                    if corpus is None:
                        raise PlanError(f"CPTRun {r.namespace}/{r.name}: Corpus {name!r} not among the resources")
                    assert isinstance(corpus.spec, CorpusSpec)
                    corpora[name] = corpus.spec
                    if (corpus.status or {}).get("outputUri"):
                        outputs[name] = corpus.status["outputUri"]
                assert isinstance(policy.spec, CheckpointPolicySpec)
                inputs = RunInputs(r.namespace, r.name, uid, spec, corpora, policy.spec, outputs)
                cm = render_trainer_configmap(inputs, settings)
                suspend = initial_suspend(spec.suspend, spec.resources.queue_name)
                out += [cm, render_pytorchjob(inputs, settings, pool, suspend, cm["data"][TRAINER_CONFIG_KEY])]
        except ConflictingCredentials as exc:
            raise PlanError(f"{r.kind} {r.namespace}/{r.name}: {exc}") from None
    return out
