import subprocess
import sys

from cpt_operator import kube, rbac


def test_operator_modules_never_import_torch():
    code = ("import sys, cpt_operator.main, cpt_operator.run, cpt_operator.render, cpt_operator.handlers.run; "
            "from cpt_operator.render import render_all; assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_secrets_are_get_only():
    verbs = {v for r in rbac.RULES if "secrets" in r.resources for v in r.verbs}
    assert verbs == {"get"}


def test_no_wildcards_and_no_duplicates():
    seen = set()
    for rule in rbac.RULES:
        assert "*" not in rule.resources and "*" not in rule.verbs and "*" not in rule.api_groups
        for g in rule.api_groups:
            for r in rule.resources:
                for v in rule.verbs:
                    assert (g, r, v) not in seen
                    seen.add((g, r, v))


def test_every_call_of_our_client_is_in_the_rbac_list():
    # The resources and verbs kube.KubeClient is used with in handlers/ (each call site).
    used = [
        (kube.PYTORCHJOBS, "get"), (kube.PYTORCHJOBS, "create"), (kube.PYTORCHJOBS, "patch"), (kube.PYTORCHJOBS, "delete"),
        (kube.JOBS, "get"), (kube.JOBS, "create"), (kube.CONFIGMAPS, "create"), (kube.CONFIGMAPS, "get"),
        (kube.CONFIGMAPS, "patch"), (kube.SECRETS, "get"), (kube.PODS, "list"), (kube.CPTRUNS, "patch"),
        (kube.CORPORA, "patch"), (kube.CPTRUNS, "get"), (kube.CORPORA, "get"),
    ]  # fmt: skip
    for res, verb in used:
        assert rbac.allows(res.group, res.plural, verb), (res, verb)
    assert not rbac.allows("", "secrets", "list")
    assert not rbac.allows("batch", "jobs", "delete")
