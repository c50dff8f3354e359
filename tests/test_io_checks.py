"""The output checks of ``lowbit._io``: JSON never holds NaN or Inf, outputs that cannot be
written are refused before any work, and figure hashes see figures, not times."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lowbit._io import check_new_output, figures_sha256, machine_info, vector_isa, write_json
from lowbit.errors import ArtefactError, OutputExistsError, OutputPathError


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_json_never_holds_a_non_finite_number(tmp_path, bad):
    path = tmp_path / "r.json"
    data = {"results": {"model": {"perplexity": bad}}, "rows": [1.0]}
    with pytest.raises(ArtefactError, match=r"at results\.model\.perplexity"):
        write_json(path, data)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ArtefactError, match=r"at rows\[1\]"):
        write_json(path, {"rows": [1.0, bad]})
    write_json(path, {"rows": [1.0, None]})
    assert json.loads(path.read_text()) == {"rows": [1.0, None]}


def test_outputs_that_cannot_be_written_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a directory"):
        check_new_output(tmp_path / "file" / "deeper" / "out.json")
    with pytest.raises(OutputPathError, match="/proc is not writable"):
        check_new_output(Path("/proc/lowbit.json"))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_new_output(tmp_path / "file")
    check_new_output(tmp_path / "new" / "deeper" / "out.json")  # folders to be made: fine
    check_new_output(tmp_path / "file", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe is gone


def test_figure_hashes_see_figures_not_times():
    a = {"perplexity": 12.5, "seconds": 1.0, "timings_s": {"q": 3.0}, "machine": {"cpus": 2}}
    b = {"perplexity": 12.5, "seconds": 9.0, "timings_s": {"q": 1.0}, "machine": {"cpus": 16}}
    assert figures_sha256(a) == figures_sha256(b)
    assert figures_sha256(a) != figures_sha256({**a, "perplexity": 12.500001})


def test_the_machine_records_its_vector_extensions():
    two_cpus = (
        "processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16 amx_tile\n"
    )
    assert vector_isa(two_cpus) == ["avx2", "fma", "avx512f", "avx512_bf16"]
    assert vector_isa("flags\t: fpu sse sse2\n") == []
    assert vector_isa("processor\t: 0\n") == []
    here = machine_info()["vector_isa"]
    cpuinfo = Path("/proc/cpuinfo")
    assert here == (vector_isa(cpuinfo.read_text()) if cpuinfo.exists() else [])
    assert set(here) <= {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                         "amx_bf16"}  # fmt: skip


def test_the_machine_records_torch_told_to_run_other_kernels(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert "aten_cpu_capability" not in machine_info()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    assert machine_info()["aten_cpu_capability"] == "default"
