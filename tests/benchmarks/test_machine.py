"""benchmarks.machine: the one record of the CPU every benchmark writes beside its timings."""

from __future__ import annotations

from benchmarks.machine import all_flags, cpu, load_average
from model_store.hardware import read_cpuinfo

TEXT = (
    "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma f16c avx512f avx512_bf16 sse4_2\n"
    "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n"
)


def test_cpu_reads_the_model_and_only_the_flags_that_pick_kernels() -> None:
    assert cpu(TEXT) == {"model": "AMD EPYC", "flags": ["avx2", "fma", "f16c", "avx512f", "avx512_bf16"]}


def test_this_machines_record_matches_the_dtype_chooser_and_the_load_is_three_numbers() -> None:
    info = read_cpuinfo()
    assert cpu() == {"model": info.model, "flags": info.relevant_flags}
    assert set(cpu()["flags"]) <= set(all_flags())
    assert len(load_average()) == 3 and all(x >= 0 for x in load_average())
