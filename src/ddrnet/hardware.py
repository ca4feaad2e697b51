"""What this machine's processor does fast, for choosing precisions that pay off on it.

Two facts decide which reduced precisions help on a CPU:

* **bfloat16.** oneDNN (PyTorch's CPU convolutions) and OpenVINO compute bf16 natively only
  with AVX512-BF16 or AMX. Elsewhere, on AVX2 laptops and servers such as AMD Zen 2, bf16
  autocast is emulated through conversions and runs slower than float32 (DDRNet-23-slim
  training step, batch 8, 352x480, on a 2-core AMD EPYC Zen 2: see README, "Train"), and
  OpenVINO silently runs its bf16 hint in float32.
* **int8 dot products.** x86 CPUs without VNNI (AVX512-VNNI, AVX-VNNI or AMX) multiply
  uint8 activations by int8 weights with ``vpmaddubsw``, whose pairwise sums saturate at
  int16. With full-range 8-bit weights that clips large products and costs a quantised
  DDRNet mIoU (ONNX Runtime's and OpenVINO's documented overflow issue); 7-bit weights
  (``reduce_range``) cannot saturate. VNNI, AMX and ARM accumulate in int32 directly.

oneDNN's ``ONEDNN_MAX_CPU_ISA`` (older name ``DNNL_MAX_CPU_ISA``) caps the instructions that
PyTorch's and OpenVINO's convolutions use; set to ``AVX2`` on an AVX-512 machine it makes them
run as on an AVX2 laptop without VNNI. Both answers below honour such a cap, so precision
choices and benchmark headers match the kernels that will actually run.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

_X86 = ("x86_64", "amd64", "i386", "i686")


@functools.cache
def _cpuinfo_field(*names: str) -> str | None:
    """The first ``/proc/cpuinfo`` line's value whose key is one of ``names`` (Linux; None
    elsewhere or when absent). The file is the same for every core we read it for."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in names:
            return value.strip()
    return None


def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (x86 ``flags``, ARM ``Features``; empty elsewhere)."""
    return frozenset((_cpuinfo_field("flags", "Features") or "").split())


def _torch_cpu_check(name: str) -> bool:
    check = getattr(torch.cpu, name, None)
    return bool(check()) if check is not None else False


def onednn_isa_cap() -> str | None:
    """The oneDNN instruction-set cap set in the environment (upper case, e.g. ``AVX2``), or
    None when oneDNN may use everything the CPU has."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    cap = (cap or "").strip().upper()
    return None if cap in ("", "ALL", "DEFAULT") else cap


def cap_openvino_like_onednn() -> None:
    """Give OpenVINO's own kernels oneDNN's instruction-set cap (``OV_CPU_MAX_ISA``, unless
    set already). OpenVINO reads the two caps apart and does not check that they agree:
    with oneDNN alone capped to AVX2 on an AVX512-BF16 CPU its plugin still chose bf16
    kernels that oneDNN then refused ("Supported primitive descriptors list is empty"),
    where a real AVX2 CPU runs the bf16 hint in float32. OpenVINO reads its cap once, at
    its first look at the CPU: call this before it loads."""
    cap = onednn_isa_cap()
    if cap is not None and not os.environ.get("OV_CPU_MAX_ISA"):
        os.environ["OV_CPU_MAX_ISA"] = cap


def _cap_allows(*markers: str) -> bool:
    """True unless an oneDNN cap is set whose name carries none of ``markers`` (oneDNN's ISA
    names say what they add: ``AVX512_CORE_VNNI``, ``AVX512_CORE_BF16``, ``AVX512_CORE_AMX``,
    ``AVX10_1_512``...; every level from AVX512_CORE_BF16 up has VNNI too)."""
    cap = onednn_isa_cap()
    return cap is None or any(marker in cap for marker in markers)


def is_x86() -> bool:
    return platform.machine().lower() in _X86


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 in hardware (x86: AVX512-BF16 or AMX; ARM:
    the BF16 extension), so bf16 autocast and OpenVINO's bf16 hint run faster than float32."""
    if is_x86():
        if not _cap_allows("BF16", "FP16", "AMX", "AVX10"):
            return False
        return (
            _torch_cpu_check("_is_avx512_bf16_supported")
            or _torch_cpu_check("_is_amx_tile_supported")
            or bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
        )
    return "bf16" in _cpu_flags()


def cpu_has_int8_dot_product() -> bool:
    """True when uint8 x int8 products accumulate without int16 saturation: x86 with
    AVX512-VNNI, AVX-VNNI or AMX, and every non-x86 CPU (ARM widens or uses SDOT/UDOT)."""
    if not is_x86():
        return True
    if not _cap_allows("VNNI", "BF16", "FP16", "AMX", "AVX10"):
        return False
    return _torch_cpu_check("_is_vnni_supported") or bool(
        {"avx512_vnni", "avx_vnni", "amx_int8"} & _cpu_flags()
    )


# The CPU flags code compiled for each of PyTorch Inductor's x86 vector ISA names needs.
_INDUCTOR_ISA_FLAGS = {
    "AVX2": {"avx2", "fma"},
    "AVX512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "AVX512_VNNI": {"avx512_vnni"},
    "AMX_TILE": {"amx_tile"},
}


def runs_inductor_isa(isa: str, machine: str) -> bool:
    """Whether code that PyTorch Inductor compiled for ``isa`` (its names, e.g. ``"AVX2"``,
    ``"AVX512 AVX512_VNNI"``) on a ``machine`` (``platform.machine()``, e.g. ``"x86_64"``)
    runs on this CPU; without ``/proc/cpuinfo`` flags, by PyTorch's own capability."""
    if machine.lower() != platform.machine().lower():
        return False
    if not is_x86():
        return True  # ARM vector code (NEON) runs on every 64-bit ARM CPU
    flags = _cpu_flags()
    capability = torch.backends.cpu.get_cpu_capability()
    for name in isa.upper().split():
        if flags:
            if not _INDUCTOR_ISA_FLAGS.get(name, {name.lower()}) <= flags:
                return False
        elif name.startswith("AVX512") and capability != "AVX512":
            return False
        elif name == "AVX2" and capability not in ("AVX2", "AVX512"):
            return False
    return True


def describe_cpu() -> str:
    """One line naming the CPU and the capabilities above, for benchmark and log headers."""
    name = _cpuinfo_field("model name") or platform.processor() or platform.machine()
    capability = torch.backends.cpu.get_cpu_capability()
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    int8 = "int8 dot products" if cpu_has_int8_dot_product() else "no VNNI"
    cap = onednn_isa_cap()
    capped = f", oneDNN capped to {cap}" if cap else ""
    return f"{name} ({capability}, {bf16}, {int8}{capped})"
