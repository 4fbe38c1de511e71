"""Cross-resource checks for a set of manifests: references resolve, in the same namespace,
to objects of the right kind. Used by `cpt plan` and local mode, where every object is at
hand (the operator itself waits for missing objects instead of failing)."""

from __future__ import annotations

from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.api.resources import Resource


def _index(resources: list[Resource]) -> dict[tuple[str, str], list[Resource]]:
    by_name: dict[tuple[str, str], list[Resource]] = {}
    for r in resources:
        by_name.setdefault((r.namespace, r.name), []).append(r)
    return by_name


def duplicate_problems(resources: list[Resource]) -> list[str]:
    seen: dict[tuple[str, str, str], str] = {}
    problems = []
    for r in resources:
        if r.key in seen:
            problems.append(f"{r.kind} {r.namespace}/{r.name} is defined twice ({seen[r.key]} and {r.source})")
        seen[r.key] = r.source
    return problems


def _resolve(
    index: dict[tuple[str, str], list[Resource]], run: Resource, field: str, name: str, kind: str
) -> str | None:
    candidates = index.get((run.namespace, name), [])
    if any(c.kind == kind for c in candidates):
        return None
    others = sorted({c.kind for c in candidates})
    if others:
        return f"CPTRun {run.namespace}/{run.name}: {field} names {name!r}, which is a {' and a '.join(others)}, not a {kind}"
    elsewhere = sorted({r.namespace for (ns, n), rs in index.items() for r in rs if n == name and r.kind == kind})
    hint = f" (a {kind} of that name exists in namespace {', '.join(elsewhere)}; references stay in their namespace)" if elsewhere else ""
    return f"CPTRun {run.namespace}/{run.name}: {field} names {kind} {name!r}, which is not among the manifests in namespace {run.namespace}{hint}"


def reference_problems(resources: list[Resource]) -> list[str]:
    """One line per unresolved or mistyped reference, naming the field."""
    index = _index(resources)
    problems = duplicate_problems(resources)
    for run in (r for r in resources if r.kind == "CPTRun"):
        spec: CPTRunSpec = run.spec  # type: ignore[assignment]
        refs = [("spec.checkpointPolicyRef.name", spec.checkpoint_policy_ref.name, "CheckpointPolicy")]
        refs += [(f"spec.corpora[{i}].name", c.name, "Corpus") for i, c in enumerate(spec.corpora)]
        refs += [
            (f"spec.evaluation.generalEvals[{i}].corpus", g.corpus, "Corpus")
            for i, g in enumerate(spec.evaluation.general_evals)
            if g.corpus
        ]
        for field, name, kind in refs:
            problem = _resolve(index, run, field, name, kind)
            if problem:
                problems.append(problem)
    return problems
