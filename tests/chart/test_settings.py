"""The settings ConfigMap the chart renders is a valid OperatorSettings file, for every key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cpt_operator.settings import OperatorSettings, load_settings

from chart_support import SCENARIOS, TENANTS, one

SETTINGS_CM = "cpt-cpt-operator-settings"

EVERY_KEY = {
    "settings": {
        "trainerImage": "registry.example.com/cpt/trainer:1.2.3",
        "allowedTrainerImages": ["registry.example.com/cpt/*:*"],
        "nodePools": [
            {
                "name": "h200",
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "gpuResource": "nvidia.com/gpu",
                "gpusPerNode": 8,
                "gpuMemoryGiB": 141,
                "gpuPeakTflops": 989.5,
                "cpu": 96,
                "memory": "1500Gi",
                "allowedNamespaces": ["team-*"],
                "allowedPriorityClasses": ["training-high"],
                "allowedTolerationKeys": ["example.com/maintenance"],
            },
            {"name": "l40s"},
        ],
        "curation": {"allowedNamespaces": ["team-*"], "maxParallelism": 32, "maxGpusPerPod": 2, "gpuNodePool": "h200",
                     "queueName": "curation"},
        "prometheus": {
            "url": "https://prometheus.monitoring.svc:9091",
            "bearerTokenSecret": {"name": "prometheus-reader", "key": "token"},
            "caConfigMap": {"name": "prometheus-ca", "key": "ca.crt"},
        },
        "controlIntervalSeconds": 15,
        "metricsStaleSeconds": 120,
        "achievedTflopsPerGpu": 450,
        "pricePerGpuHour": 3.1,
        "backoffLimit": 5,
        "pvcMountRoot": "/mnt/data",
    },
    "metrics": {"port": 9090},
    "rbac": {"scope": "namespaces", "watchNamespaces": TENANTS},
}


def rendered_settings(render: Any, values: dict[str, Any]) -> dict[str, Any]:
    data = one(render(values), "ConfigMap", name=SETTINGS_CM)["data"]
    return yaml.safe_load(data["settings.yaml"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_default_settings_validate_as_operator_settings(scenario: str, render: Any) -> None:
    settings = OperatorSettings(**rendered_settings(render, SCENARIOS[scenario]))
    assert settings.watch_namespaces == (TENANTS if scenario.startswith("namespaces") else [])
    assert settings.operator_metrics_port == 8080
    assert settings.pool("h100-80gb") is not None


def test_every_settings_value_reaches_operator_settings(render: Any) -> None:
    data = rendered_settings(render, EVERY_KEY)
    settings = OperatorSettings(**data)
    # Every OperatorSettings field is set from values: a new field the chart does not map fails here.
    assert set(data) == set(OperatorSettings.model_fields)
    assert settings.trainer_image == "registry.example.com/cpt/trainer:1.2.3"
    assert settings.image_allowed("registry.example.com/cpt/trainer:dev")
    assert settings.prometheus_url == "https://prometheus.monitoring.svc:9091"
    assert settings.prometheus_bearer_token_file.endswith("/token")
    assert settings.prometheus_ca_file.endswith("/ca.crt")
    assert (settings.control_interval_seconds, settings.metrics_stale_seconds) == (15, 120)
    assert (settings.achieved_tflops_per_gpu, settings.price_per_gpu_hour, settings.backoff_limit) == (450, 3.1, 5)
    assert settings.pvc_mount_root == "/mnt/data" and settings.operator_metrics_port == 9090
    assert settings.watch_namespaces == TENANTS
    h200 = settings.pool("h200")
    assert h200.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert h200.tolerations[0]["key"] == "nvidia.com/gpu"
    assert (h200.gpus_per_node, h200.gpu_memory_gib, h200.cpu, h200.memory) == (8, 141, "96", "1500Gi")
    assert h200.allows("team-a") and not h200.allows("other")
    # Keys a pool leaves out take OperatorSettings' defaults, not nulls.
    assert settings.pool("l40s").gpu_resource == "nvidia.com/gpu"
    assert settings.pool("l40s").allowed_priority_classes == [] and settings.pool("l40s").allowed_toleration_keys == []
    assert (h200.allowed_priority_classes, h200.allowed_toleration_keys) == (["training-high"], ["example.com/maintenance"])
    cur = settings.curation
    assert (cur.allowed_namespaces, cur.max_parallelism, cur.max_gpus_per_pod, cur.gpu_node_pool, cur.queue_name) == (
        ["team-*"], 32, 2, "h200", "curation")
    # Every NodePool field is reachable from values.
    assert set(data["node_pools"][0]) == set(type(h200).model_fields)


def test_rendered_file_loads_through_the_operators_loader(render: Any, tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(one(render(EVERY_KEY), "ConfigMap", name=SETTINGS_CM)["data"]["settings.yaml"], encoding="utf-8")
    monkeypatch.setenv("CPT_OPERATOR_SETTINGS_FILE", str(path))
    assert load_settings().metrics_stale_seconds == 120


def test_operator_settings_rejects_a_key_it_does_not_know(render: Any) -> None:
    # The check above would be vacuous if OperatorSettings accepted anything.
    with pytest.raises(Exception):
        OperatorSettings(**{**rendered_settings(render, {}), "trainerImage": "x"})
