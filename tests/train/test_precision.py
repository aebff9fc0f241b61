"""``precision: auto`` picks bf16 only on hardware that computes it natively."""

import pytest
import torch

import medfm.train.precision as precision
from medfm.train.precision import cpu_flags, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx2", "avx512f"}, "fp32"),  # AVX-512 without BF16: bf16 is emulated, 10-100x slower
    ({"avx512f", "avx512_bf16"}, "bf16"),
    ({"amx_bf16", "amx_tile"}, "bf16"),
    (set(), "fp32"),
])
def test_auto_on_cpu_follows_the_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert resolve_precision("auto", CPU) == expected


def test_explicit_choices_pass_through(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: set())
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"


def test_flags_are_read_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu sse\n")
    monkeypatch.setattr(precision, "CPUINFO", info)
    assert {"fpu", "sse", "avx512_bf16"} <= cpu_flags()
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "absent")
    assert cpu_flags() == set()
