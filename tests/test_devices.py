"""precision 'auto' on a CPU: bf16 only where a measured probe finds its matmuls clearly faster."""

import math

import pytest
import torch

from agnews_lora import devices


@pytest.fixture
def fresh_probe():
    """Each test measures anew; later tests get this CPU's real answer again."""
    devices.bf16_speedup.cache_clear()
    devices.cpu_has_fast_bf16.cache_clear()
    yield
    devices.bf16_speedup.cache_clear()
    devices.cpu_has_fast_bf16.cache_clear()


def fake_timings(monkeypatch, fp32_s: float, bf16_s: float) -> list:
    calls = []

    def timed(x, y):
        calls.append(x.dtype)
        return fp32_s if x.dtype == torch.float32 else bf16_s

    monkeypatch.setattr(devices, "_time_matmul", timed)
    return calls


def test_without_bf16_instructions_auto_is_fp32_and_nothing_is_measured(fresh_probe, monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "fma"})
    calls = fake_timings(monkeypatch, 0.01, 0.001)
    assert devices.resolve_precision("auto", "cpu") == "fp32"
    assert devices.bf16_speedup() is None and calls == []
    assert devices.precision_reason("auto", "cpu") == "auto: this CPU has no bf16 instructions"


@pytest.mark.parametrize(
    "flag, fp32_s, bf16_s, expected",
    [
        ("amx_bf16", 0.007, 0.001, "bf16"),  # AMX: ~7x
        ("avx512_bf16", 0.004, 0.001, "bf16"),  # AVX512-BF16 on Zen 4: ~4x
        ("avx512_bf16", 0.003, 0.006, "fp32"),  # AVX512-BF16 with AMX hidden: 0.5x
        ("avx512_bf16", 0.0011, 0.001, "fp32"),  # 1.1x: not worth bf16's rounding
    ],
)
def test_auto_follows_the_measured_speedup_not_the_flags(
    fresh_probe, monkeypatch, flag, fp32_s, bf16_s, expected
):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", flag})
    calls = fake_timings(monkeypatch, fp32_s, bf16_s)
    assert devices.resolve_precision("auto", "cpu") == expected
    assert devices.bf16_speedup() == pytest.approx(fp32_s / bf16_s)
    assert f"measured {fp32_s / bf16_s:.1f}x fp32's pace" in devices.precision_reason("auto", "cpu")
    # measured once per process, alternating the two precisions
    devices.resolve_precision("auto", "cpu")
    assert calls.count(torch.float32) == calls.count(torch.bfloat16) == 7
    assert calls[:2] == [torch.float32, torch.bfloat16]
    # an explicit precision is taken as it is
    assert devices.resolve_precision("bf16", "cpu") == "bf16"
    assert devices.resolve_precision("fp32", "cpu") == "fp32"
    assert devices.precision_reason("bf16", "cpu") == ""


def test_the_probe_really_times_this_cpus_matmuls(fresh_probe, monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512_bf16"})
    speedup = devices.bf16_speedup(n=128, reps=3)
    assert math.isfinite(speedup) and 0 < speedup < 1000


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = devices.cpu_flags()
    assert isinstance(flags, set)
    if flags:  # Linux: the flags line of the first CPU
        assert all(f == f.strip() and f for f in flags)


def test_the_probe_leaves_the_global_random_state_alone(fresh_probe, monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512_bf16"})
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    devices.bf16_speedup(n=64, reps=1)
    assert torch.equal(torch.rand(3), expected)
