"""Model FLOPs per token and the device's dense bf16 peak, for MFU (DESIGN section 7).

FLOPs per trained token = 6 N + 12 L H S (N parameters, L layers, H hidden size, S sequence
length: the attention score and value products, forward and backward).
"""

from __future__ import annotations

import os

# Dense (no sparsity) bf16 peak FLOP/s by device-name substring; checked in this order.
_PEAK_BF16 = (
    ("H200", 989.5e12),
    ("H100", 989.5e12),
    ("H800", 989.5e12),
    ("GH200", 989.5e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
)


def flops_per_token(parameters: int, layers: int, hidden: int, sequence_length: int) -> float:
    return 6.0 * parameters + 12.0 * layers * hidden * sequence_length


def device_peak_flops(device_name: str | None) -> float:
    """Dense bf16 peak of one device in FLOP/s; 0 when unknown (MFU is then reported as 0).

    `CPT_PEAK_FLOPS` overrides (for devices not in the table)."""
    override = os.environ.get("CPT_PEAK_FLOPS")
    if override:
        return float(override)
    if not device_name:
        return 0.0
    for key, peak in _PEAK_BF16:
        if key in device_name:
            return peak
    return 0.0


def mfu(tokens_per_second: float, flops_token: float, peak_per_device: float, devices: int) -> float:
    if peak_per_device <= 0:
        return 0.0
    return tokens_per_second * flops_token / (peak_per_device * devices)
