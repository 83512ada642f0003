"""Fast defaults: which precision and memory layout a run uses when the config says ``auto``.

``train.precision: auto`` (the default) trains under bf16 autocast where the device computes bf16
natively, and in fp32 elsewhere:

- CUDA: bf16 when ``torch.cuda.is_bf16_supported()`` (Ampere and newer).
- CPU: the CPU runs bf16 natively when it has AMX (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``),
  read from ``/proc/cpuinfo`` at run time, and oneDNN is allowed to use them (``ONEDNN_MAX_CPU_ISA``
  capped below ``AVX512_CORE_BF16`` leaves only emulated bf16).

Measured on a 2-core Xeon with AMX (CIFAR-10, ResNet-18 width 0.25, batch 256): bf16 1.75x the
fp32 step's images/s, channels_last 1.27x, both 2.16x; on a 2-core AMD EPYC with AVX-512 BF16,
1.95x, 1.35x and 2.15x (see BENCHMARKS.md).

``model.channels_last: null`` (the default) means on for convolutional backbones on every device.
Two PyTorch 2.13 CPU kernel defects that the fast defaults used to hit are worked around in
``selfsup.models.resnet`` (NaN bf16 weight gradients of a strided 3x3 conv on 1x1 maps; a segfault
in the fp32 channels_last weight gradient of the strided 1x1 shortcut with few channels). Losses
stay in fp32 under bf16 (``selfsup.losses.precision``). The resolved values replace
``auto``/``null`` in the config, so the run's ``config.yaml`` records what ran and a resumed run
runs the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# oneDNN's ISA names in increasing order; bf16 runs natively from AVX512_CORE_BF16 on.
_ISA_ORDER = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
              "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
              "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "ALL", "DEFAULT"]
_NATIVE_BF16_FROM = _ISA_ORDER.index("AVX512_CORE_BF16")


def cpu_bf16_flags(cpuinfo: str) -> set[str]:
    """The bf16-related flags (``amx_bf16``, ``avx512_bf16``) of the first processor in ``cpuinfo``."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            return {f for f in line.split(":", 1)[-1].split() if f in ("amx_bf16", "avx512_bf16")}
    return set()


def cpu_native_bf16(cpuinfo: str | None = None, isa_cap: str | None = None) -> tuple[bool, str]:
    """Whether this CPU runs bf16 matrix kernels natively, and why (one phrase)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False, "CPU features unknown (no /proc/cpuinfo)"
    flags = cpu_bf16_flags(cpuinfo)
    if not flags:
        return False, "CPU without AMX or AVX-512 BF16"
    have = "AMX" if "amx_bf16" in flags else "AVX-512 BF16"
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") if isa_cap is None else isa_cap) or ""
    cap = cap.strip().upper()
    if cap and cap in _ISA_ORDER and _ISA_ORDER.index(cap) < _NATIVE_BF16_FROM:
        return False, f"CPU with {have}, but ONEDNN_MAX_CPU_ISA={cap} leaves only emulated bf16"
    return True, f"CPU with {have}"


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """``(precision, reason)``: ``auto`` resolved for ``device``; fp32/bf16 are kept as asked."""
    if requested != "auto":
        return requested, "set in the config"
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ("bf16", "GPU with bf16") if ok else ("fp32", "GPU without bf16")
    if device.type == "cpu":
        native, why = cpu_native_bf16()
        return ("bf16" if native else "fp32"), why
    return "fp32", f"{device.type} device"


def resolve_fast_defaults(cfg, device: torch.device) -> str | None:
    """Replace ``train.precision: auto`` and ``model.channels_last: null`` in ``cfg`` by what this
    device runs best; return the line to print once, or None when the config fixed both."""
    parts = []
    if cfg.train.precision == "auto":
        cfg.train.precision, why = resolve_precision("auto", device)
        parts.append(f"precision {cfg.train.precision} (auto: {why})")
    if cfg.model.channels_last is None:
        cfg.model.channels_last = device.type in ("cuda", "cpu")
        parts.append(f"channels_last memory layout {'on' if cfg.model.channels_last else 'off'} (auto)")
    if not parts:
        return None
    return "using " + ", ".join(parts) + "; set train.precision / model.channels_last to choose"
