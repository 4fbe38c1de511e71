import pytest

from cpt_operator.render import names


def test_short_names_are_kept():
    assert names.pytorchjob_name("llama3-8b-legal") == "llama3-8b-legal"
    assert names.trainer_configmap_name("docs-cpt") == "docs-cpt-trainer-config"
    assert names.curation_job_name("docs") == "docs-curate"


@pytest.mark.parametrize("fn,limit", [(names.pytorchjob_name, 48), (names.trainer_configmap_name, 63),
                                      (names.curation_job_name, 52), (names.curation_configmap_name, 63)])  # fmt: skip
def test_long_names_truncated_unique_and_valid(fn, limit):
    a, b = "a" * 60 + "-x1", "a" * 60 + "-x2"
    na, nb = fn(a), fn(b)
    assert na != nb
    for n in (na, nb):
        assert len(n) <= limit and names.DNS1123_LABEL_RE.match(n)


def test_job_names_start_with_a_letter():
    # Services of PyTorchJob replicas need DNS-1035 labels.
    assert names.pytorchjob_name("1run")[0].isalpha()
    assert names.curation_job_name("9corpus")[0].isalpha()
    assert names.pytorchjob_name("1run") != names.pytorchjob_name("1run2")


@pytest.mark.parametrize("bad", ["", "UPPER", "a_b", "-a", "a" * 64, "a.b", "a/b"])
def test_invalid_tenant_names_refused(bad):
    with pytest.raises(names.InvalidName):
        names.check_name(bad)
    with pytest.raises(names.InvalidName):
        names.pytorchjob_name(bad)


def test_labels_identify_tenant_and_run():
    labels = names.run_labels("team-a", "run-1")
    assert labels[names.LABEL_RUN] == "run-1" and labels[names.LABEL_NAMESPACE] == "team-a"
    assert labels["app.kubernetes.io/managed-by"] == "cpt-operator"
