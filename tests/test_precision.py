"""``precision: auto`` picks bfloat16 exactly where the CPU multiplies it natively.

The CPU's flags and oneDNN's instruction-set cap are the inputs; each case sets them, so
these tests say the same on every machine.
"""

from __future__ import annotations

import pytest

from agegap import machine, runtime

SAPPHIRE_RAPIDS = "avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile"
ZEN4 = "avx2 fma avx512f avx512_vnni avx512_bf16"
SKYLAKE_X = "avx2 fma avx512f"
ZEN3 = "avx2 fma"


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch):
    """Set the CPU's flags and ``ONEDNN_MAX_CPU_ISA`` (None: uncapped) for one case."""

    def set_cpu(flags: str, cap: str | None = None) -> None:
        monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset(flags.split()))
        monkeypatch.setattr(runtime, "has_gpu", lambda: False)
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
        if cap is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)

    return set_cpu


@pytest.mark.parametrize(
    ("flags", "cap", "unit"),
    [
        (SAPPHIRE_RAPIDS, None, "amx_bf16"),
        (SAPPHIRE_RAPIDS, "all", "amx_bf16"),
        (SAPPHIRE_RAPIDS, "AVX10_1_512_AMX", "amx_bf16"),
        (SAPPHIRE_RAPIDS, "AVX512_CORE_BF16", "avx512_bf16"),  # an AMX CPU imitating Zen 4
        (SAPPHIRE_RAPIDS, "avx512_core", None),  # ... and a CPU without bfloat16
        (ZEN4, None, "avx512_bf16"),
        (ZEN4, "AVX512_CORE_AMX", "avx512_bf16"),  # a cap above the CPU changes nothing
        (ZEN4, "AVX2", None),
        (SKYLAKE_X, None, None),
        (ZEN3, None, None),
    ],
)
def test_the_bfloat16_unit_follows_the_flags_and_the_cap(
    cpu, flags: str, cap: str | None, unit: str | None
) -> None:
    cpu(flags, cap)
    assert machine.bfloat16_unit() == unit


@pytest.mark.parametrize(("flags", "chosen"), [
    (SAPPHIRE_RAPIDS, "mixed_bfloat16"),
    (ZEN4, "mixed_bfloat16"),
    (SKYLAKE_X, "float32"),
    (ZEN3, "float32"),
])
def test_auto_is_bfloat16_where_the_cpu_multiplies_it(cpu, flags: str, chosen: str) -> None:
    cpu(flags)
    precision, reason = runtime.choose_precision("auto")
    assert precision == chosen
    assert reason.startswith("auto: ")
    if chosen == "mixed_bfloat16":
        assert machine.bfloat16_unit() in reason


def test_the_reason_names_the_cap_that_took_bfloat16_away(cpu) -> None:
    cpu(ZEN4, "AVX512_CORE")
    assert runtime.choose_precision("auto") == (
        "float32",
        "auto: the CPU has no native bfloat16 (amx_bf16, avx512_bf16)"
        " under ONEDNN_MAX_CPU_ISA=AVX512_CORE",
    )


def test_without_onednn_auto_stays_float32(cpu, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu(ZEN4)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    precision, reason = runtime.choose_precision("auto")
    assert precision == "float32" and "TF_ENABLE_ONEDNN_OPTS=0" in reason


def test_a_precision_set_in_params_is_kept(cpu) -> None:
    cpu(ZEN3)
    assert runtime.choose_precision("mixed_bfloat16") == ("mixed_bfloat16", "set in params.yaml")
    cpu(ZEN4)
    assert runtime.choose_precision("float32") == ("float32", "set in params.yaml")
