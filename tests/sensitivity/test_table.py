"""The sensitivity table: JSON round trip, CSV, aggregation, rank correlation, bad input."""

from __future__ import annotations

import json
import math

import pytest

from lowbit.errors import ArtefactError, ConfigError
from lowbit.formats import IntFormat, PerGroup
from lowbit.plan import LayerSpec
from lowbit.sensitivity.table import Entry, LayerInfo, SensitivityTable, check_menu

MENU = (LayerSpec(IntFormat(2), PerGroup(64)), LayerSpec(IntFormat(4), PerGroup(64)))


def make_table(values=None) -> SensitivityTable:
    layers = tuple(
        LayerInfo(f"model.layers.{b}.{m}", b, m, 64, 128)
        for b in range(2)
        for m in ("self_attn.q_proj", "mlp.down_proj")
    )
    values = values or {}
    entries = {}
    for i, info in enumerate(layers):
        for s in range(2):
            kl = values.get((info.name, s), (i + 1) * (10.0 if s == 0 else 1.0))
            entries[(info.name, s)] = Entry(
                info.name, s, 64 * 128 * (2 + 2 * s), kl, kl * 3, kl / 2
            )
    return SensitivityTable(
        model={"source": "m", "fingerprint": "abc"},
        menu=MENU,
        layers=layers,
        entries=entries,
        n_blocks=2,
        other_bytes=1000,
        value_and_down=("mlp.down_proj",),
    )


def test_json_round_trip(tmp_path):
    table = make_table()
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table.to_dict()))
    back = SensitivityTable.load(path)
    assert back.to_dict() == table.to_dict()
    assert back.menu == MENU
    assert back.is_complete()


def test_csv_has_one_row_per_layer_and_spec():
    lines = make_table().to_csv().strip().split("\n")
    assert len(lines) == 1 + 4 * 2
    assert lines[1].startswith("model.layers.0.self_attn.q_proj,0,self_attn.q_proj,")
    assert ",2.000000," in lines[1]  # 2 bits per weight (bits field / numel)


def test_aggregate_per_block_and_module():
    table = make_table()
    by_block = table.aggregate("kl", "block")
    assert by_block["0"] == [10.0 + 20.0, 1.0 + 2.0]
    assert by_block["1"] == [30.0 + 40.0, 3.0 + 4.0]
    by_module = table.aggregate("kl", "module")
    assert by_module["mlp.down_proj"] == [20.0 + 40.0, 2.0 + 4.0]


def test_rank_correlation_of_a_monotone_proxy_is_one():
    rho = make_table().rank_correlation("hessian")
    assert rho["all"] == pytest.approx(1.0)
    assert rho["GPTQ W2 g64 sym"] == pytest.approx(1.0)


def test_rank_correlation_of_a_reversed_proxy_is_minus_one():
    table = make_table()
    table.entries = {
        k: Entry(e.layer, e.spec, e.bits, e.kl, -e.hessian, e.fisher)
        for k, e in table.entries.items()
    }
    assert table.rank_correlation("hessian")["all"] == pytest.approx(-1.0)


def test_missing_values_give_nan_correlation():
    table = make_table()
    table.entries = {
        k: Entry(e.layer, e.spec, e.bits, None, e.hessian, e.fisher)
        for k, e in table.entries.items()
    }
    assert math.isnan(table.rank_correlation("hessian")["all"])
    assert not table.has_metric("kl")


def test_other_model_is_refused():
    with pytest.raises(ArtefactError, match="fingerprint"):
        make_table().check_model("zzz", "other-model")


def test_version_and_malformed_files_are_refused(tmp_path):
    data = make_table().to_dict()
    bad = tmp_path / "v.json"
    bad.write_text(json.dumps({**data, "lowbit_sensitivity_version": 99}))
    with pytest.raises(ArtefactError, match="version 99"):
        SensitivityTable.load(bad)
    broken = tmp_path / "b.json"
    broken.write_text(json.dumps({k: v for k, v in data.items() if k != "layers"}))
    with pytest.raises(ArtefactError, match="layers"):
        SensitivityTable.load(broken)
    with pytest.raises(ArtefactError, match="does not exist"):
        SensitivityTable.load(tmp_path / "none.json")


def test_incomplete_table_names_the_missing_entry():
    table = make_table()
    del table.entries[("model.layers.1.mlp.down_proj", 1)]
    assert not table.is_complete()
    with pytest.raises(ArtefactError, match=r"model.layers.1.mlp.down_proj with GPTQ W4"):
        table.entry("model.layers.1.mlp.down_proj", 1)


def test_menu_checks():
    with pytest.raises(ConfigError, match="empty"):
        check_menu(())
    with pytest.raises(ConfigError, match="more than once"):
        check_menu((MENU[0], MENU[0]))
