"""The images install the project as the README does, and run as the users the chart and the
operator expect; the kind workflow is well-formed and marked as not run here."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from chart_support import CHART_DIR, REPO

IMAGES = REPO / "images"


def instructions(path: Path) -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_operator_image_is_slim_non_root_and_torch_free() -> None:
    lines = instructions(IMAGES / "Dockerfile.operator")
    assert any(re.match(r"FROM \$\{PYTHON_IMAGE\}$", l) for l in lines)
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in lines
    text = "\n".join(lines)
    assert "python -m build --wheel" in text
    assert re.search(r'pip install "\$\(ls /tmp/dist/cpt_operator-\*\.whl\)\[operator\]"', text)
    assert "trainer]" not in text and not re.search(r"pip install[^&\n]*\btorch\b", text)
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    user = [l for l in lines if l.startswith("USER ")][-1]
    assert user == f"USER {values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}"
    assert lines[-1] == 'ENTRYPOINT ["cpt-operator"]'


def test_trainer_image_pins_torch_and_builds_deepspeed_like_the_readme() -> None:
    from cpt_operator.render.pod import RUN_AS_USER

    lines = instructions(IMAGES / "Dockerfile.trainer")
    text = "\n".join(lines)
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[0-9.]+-cudnn-devel-ubuntu", text)
    readme_torch = re.search(r"torch==([0-9.]+)", (REPO / "README.md").read_text(encoding="utf-8")).group(1)
    assert f"ARG TORCH_VERSION={readme_torch}" in lines
    assert re.search(r"ARG DEEPSPEED_VERSION=[0-9]+\.[0-9]+\.[0-9]+$", text, re.M)
    assert "DS_BUILD_OPS=0" in text
    assert re.search(r'pip install --no-build-isolation "deepspeed==\$\{DEEPSPEED_VERSION\}"', text)
    assert re.search(r'pip install "\$\(ls /tmp/dist/cpt_operator-\*\.whl\)\[trainer\]" -c /opt/venv/constraints.txt', text)
    # torch first, DeepSpeed against it, the project last (the README's order).
    assert text.index('"torch==${TORCH_VERSION}"') < text.index("deepspeed==") < text.index("[trainer]")
    assert [l for l in lines if l.startswith("USER ")][-1] == f"USER {RUN_AS_USER}:{RUN_AS_USER}"


def test_kind_workflow_is_valid_and_marked_as_not_run_here() -> None:
    path = REPO / ".github" / "workflows" / "e2e-kind.yaml"
    text = path.read_text(encoding="utf-8")
    header = text.split("\nname:", 1)[0]
    assert "NOT RUN IN THIS ENVIRONMENT" in header
    workflow = yaml.safe_load(text)
    job = workflow["jobs"]["e2e"]
    assert job["strategy"]["matrix"]["rbac"] == ["cluster", "namespaces"]
    steps = "\n".join(s.get("run", "") + s.get("uses", "") for s in job["steps"])
    for needle in ("helm/kind-action", "docker build -f images/Dockerfile.operator", "helm install cpt charts/cpt-operator", "kubectl auth can-i list secrets"):
        assert needle in steps, needle
