"""Plans: precedence of exact names over patterns over the default, name checking, and
versioned JSON/YAML round trips."""

from __future__ import annotations

import json

import pytest

from lowbit.algorithms import ActOrder, GPTQConfig, RTNConfig
from lowbit.errors import ArtefactError, ConfigError
from lowbit.formats import IntFormat, PerChannel, PerGroup, PerTensor
from lowbit.plan import PLAN_VERSION, LayerSpec, Plan, Rule, uniform_plan

W4G128 = LayerSpec(IntFormat(4), PerGroup(128))
W3G64 = LayerSpec(
    IntFormat(3, symmetric=False),
    PerGroup(64),
    GPTQConfig(damp=0.05, block_size=64, act_order=ActOrder.GROUP),
)
W8 = LayerSpec(IntFormat(8, scale_dtype="bfloat16"), PerChannel(), RTNConfig())
W2T = LayerSpec(
    IntFormat(2, scale_dtype="float32"), PerTensor(), GPTQConfig(act_order=ActOrder.OFF)
)

NAMES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.o_proj",
    "model.layers.0.mlp.up_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.mlp.down_proj",
    "lm_head",
]

PLAN = Plan(
    default=W4G128,
    rules=(
        Rule("re:.*\\.mlp\\.down_proj", W8),  # first pattern: wins over the next one
        Rule("re:model\\.layers\\.1\\..*", W3G64),
        Rule("model.layers.1.mlp.down_proj", W2T),  # exact: beats both patterns
        Rule("re:.*self_attn\\.o_proj", None),
        Rule("lm_head", None),
    ),
)

PLANS = [
    pytest.param(PLAN, id="rules"),
    pytest.param(Plan(default=None, rules=(Rule("re:.*q_proj", W3G64),)), id="keep-by-default"),
    pytest.param(uniform_plan(W2T, keep=("lm_head", "re:.*\\.0\\..*")), id="uniform"),
    pytest.param(Plan(default=W8), id="default-only"),
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.0.self_attn.q_proj", W4G128),  # no rule: default
        ("model.layers.0.mlp.down_proj", W8),  # pattern
        ("model.layers.1.self_attn.q_proj", W3G64),  # second pattern
        ("model.layers.1.mlp.down_proj", W2T),  # exact beats the patterns listed before it
        ("model.layers.0.self_attn.o_proj", None),  # pattern with no spec: keep full precision
        ("lm_head", None),  # exact name with no spec
    ],
)
def test_precedence(name, expected):
    assert PLAN.spec_for(name) == expected


def test_first_pattern_wins():
    """A name matching several patterns takes the first listed; a name matching only a later
    pattern still gets it."""
    plan = Plan(default=None, rules=(Rule("re:.*proj", W8), Rule("re:.*up_proj", W3G64)))
    assert plan.spec_for("model.layers.0.mlp.up_proj") == W8
    swapped = Plan(default=None, rules=plan.rules[::-1])
    assert swapped.spec_for("model.layers.0.mlp.up_proj") == W3G64
    assert swapped.spec_for("model.layers.0.mlp.down_proj") == W8


def test_patterns_match_the_whole_name():
    plan = Plan(default=W4G128, rules=(Rule("re:q_proj", None),))
    assert plan.spec_for("model.layers.0.self_attn.q_proj") == W4G128
    assert plan.spec_for("q_proj") is None


def test_resolve_maps_every_name():
    resolved = PLAN.resolve(NAMES)
    assert list(resolved) == NAMES
    assert resolved == {
        "model.layers.0.self_attn.q_proj": W4G128,
        "model.layers.0.self_attn.o_proj": None,
        "model.layers.0.mlp.up_proj": W4G128,
        "model.layers.0.mlp.down_proj": W8,
        "model.layers.1.self_attn.q_proj": W3G64,
        "model.layers.1.mlp.down_proj": W2T,
        "lm_head": None,
    }


def test_resolve_rejects_an_unknown_exact_name_and_suggests_the_close_one():
    plan = Plan(default=W4G128, rules=(Rule("model.layers.0.mlp.up_prj", W8),))
    with pytest.raises(
        ConfigError,
        match=r"'model\.layers\.0\.mlp\.up_prj'.*did you mean "
        r"model\.layers\.0\.mlp\.up_proj",
    ):
        plan.resolve(NAMES)


def test_resolve_ignores_keep_patterns_that_match_nothing():
    plan = Plan(default=W4G128, rules=(Rule("re:.*gate_proj", None),))
    assert set(plan.resolve(NAMES).values()) == {W4G128}


def test_resolve_refuses_plans_that_quantize_less_than_they_say():
    with pytest.raises(ConfigError, match=r"'re:.\*gate_proj' matches no layer"):
        Plan(default=None, rules=(Rule("re:.*gate_proj", W4G128),)).resolve(NAMES)
    keep_all = Plan(default=None, rules=(Rule("re:.*", None),))
    assert set(keep_all.resolve(NAMES).values()) == {None}  # lowbit's own identity checks
    with pytest.raises(ConfigError, match="quantizes nothing"):
        keep_all.check_does_something(NAMES)  # a user's plan: refused before any work
    Plan(default=None, smoothquant=0.5).check_does_something(NAMES)  # does something


def test_bad_regex_is_a_config_error():
    with pytest.raises(ConfigError, match=r"re:\(unclosed"):
        Rule("re:(unclosed", None)


@pytest.mark.parametrize("plan", PLANS)
def test_dict_round_trip(plan):
    data = plan.to_dict()
    assert data["lowbit_plan_version"] == PLAN_VERSION
    assert Plan.from_dict(json.loads(json.dumps(data))) == plan


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
@pytest.mark.parametrize("plan", PLANS)
def test_file_round_trip(plan, suffix, tmp_path):
    path = tmp_path / f"plan{suffix}"
    path.write_text(plan.dumps("json" if suffix == ".json" else "yaml"))
    loaded = Plan.load(path)
    assert loaded == plan
    assert loaded.resolve(NAMES) == plan.resolve(NAMES)


def test_yaml_is_yaml_and_json_is_json():
    assert json.loads(PLAN.dumps())["lowbit_plan_version"] == PLAN_VERSION
    assert PLAN.dumps("yaml").startswith(f"lowbit_plan_version: {PLAN_VERSION}\n")


@pytest.mark.parametrize("version", [None, 0, 3, "1"])  # 2: plan-level options
def test_wrong_plan_version_is_an_artefact_error(version, tmp_path):
    data = PLAN.to_dict()
    data["lowbit_plan_version"] = version
    with pytest.raises(ArtefactError, match=f"plan version {version!r}"):
        Plan.from_dict(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ArtefactError):
        Plan.load(path)


def test_missing_or_malformed_files_are_artefact_errors(tmp_path):
    with pytest.raises(ArtefactError, match="does not exist"):
        Plan.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ArtefactError, match="not valid JSON/YAML"):
        Plan.load(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ArtefactError, match="mapping"):
        Plan.load(listing)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"granularity": {"type": "row"}}, "unknown granularity 'row'"),
        ({"algorithm": {"name": "hqq"}}, "unknown algorithm 'hqq'"),
        ({"algorithm": {"name": "gptq", "act_order": "desc"}}, "'desc'"),
        ({"format": {"type": "fp", "bits": 4}}, "unknown format type 'fp'"),
        ({"format": {"bits": 9}}, "got 9"),
        ({"granularity": {"type": "group", "size": 0}}, "got 0"),
        ({"format": {"symmetric": True}}, "format.bits: missing"),
        ({"format": {"bits": 4, "symmetric": "no"}}, "symmetric: must be true or false"),
        ({"granularity": {"type": "group", "size": "64"}}, "size: must be an integer"),
        ({"algorithm": {"name": "gptq", "damp": "0.1"}}, "damp: must be a number"),
        ({"extra": 1}, "extra: unknown field in a layer spec"),
    ],
)
def test_malformed_layer_specs_are_config_errors(patch, message):
    data = {**W3G64.to_dict(), **patch}
    with pytest.raises(ConfigError, match=message):
        LayerSpec.from_dict(data)


@pytest.mark.parametrize(
    ("spec", "text", "out_f", "in_f", "bits"),
    [
        (W4G128, "GPTQ W4 g128 sym", 576, 576, 4 + 5 * 16 / 576),
        # act-order "group" saves a 32-bit permutation entry per input column
        (
            W3G64,
            "GPTQ W3 g64 asym damp=0.05 block_size=64 act_order=group",
            128,
            256,
            3 + 4 * 19 / 256 + 32 / 128,
        ),
        (W8, "RTN W8 per-channel sym scale_dtype=bfloat16", 64, 1024, 8 + 16 / 1024),
        (W2T, "GPTQ W2 per-tensor sym scale_dtype=float32 act_order=off", 4, 8, 2 + 32 / 32),
    ],
)
def test_describe_and_bits_per_weight(spec, text, out_f, in_f, bits):
    assert spec.describe() == text
    assert spec.bits_per_weight(out_f, in_f) == bits


@pytest.mark.parametrize("act_order", list(ActOrder))
@pytest.mark.parametrize("granularity", [PerGroup(16), PerChannel()])
def test_plan_bits_agree_with_what_gptq_stores(act_order, granularity):
    import torch

    from lowbit.algorithms import gptq_quantize

    spec = LayerSpec(IntFormat(3), granularity, GPTQConfig(act_order=act_order))
    torch.manual_seed(0)
    W, X = torch.randn(12, 40), torch.randn(200, 40)
    qw = gptq_quantize(W, X.T @ X, spec.fmt, spec.granularity, spec.algorithm).weight
    assert qw.bits_per_weight() == pytest.approx(spec.bits_per_weight(12, 40))


# --- every format, and clipping, in plans ------------------------------------------------------


def _new_format_specs():
    from lowbit.formats import FORMATS, LUTFormat, MSEClip, Percentile

    rtn = RTNConfig()
    return [
        LayerSpec(FORMATS.get("mxfp4")(), PerGroup(32), rtn),
        LayerSpec(FORMATS.get("mxint8")(), PerGroup(32), RTNConfig(MSEClip(10, 0.3))),
        LayerSpec(FORMATS.get("nvfp4")(), PerGroup(16), rtn),
        LayerSpec(FORMATS.get("nf4")("bfloat16"), PerGroup(64), RTNConfig(Percentile(99.9))),
        LayerSpec(FORMATS.get("fp8_e4m3")(), PerChannel(), rtn),
        LayerSpec(FORMATS.get("fp6_e2m3")(), PerTensor(), rtn),
        LayerSpec(LUTFormat(3), PerChannel(), rtn),
    ]


def test_every_format_round_trips_in_a_plan(tmp_path):
    specs = _new_format_specs()
    plan = Plan(default=specs[0], rules=tuple(Rule(f"layer{i}", s) for i, s in enumerate(specs)))
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    for suffix in (".json", ".yaml"):
        path = tmp_path / f"plan{suffix}"
        path.write_text(plan.dumps("yaml" if suffix == ".yaml" else "json"))
        assert Plan.load(path) == plan


def test_format_and_clipping_fields_in_the_dict():
    spec = _new_format_specs()[1]
    data = spec.to_dict()
    assert data["format"] == {"type": "mx", "element": "int8"}
    assert data["algorithm"] == {
        "name": "rtn",
        "clipping": {"type": "mse", "steps": 10, "max_shrink": 0.3},
    }
    assert W8.to_dict()["algorithm"] == {"name": "rtn"}  # min-max: the dict plans always had


@pytest.mark.parametrize(
    ("spec_index", "text", "bits"),
    [
        (0, "RTN MXFP4 g32", 4 + 8 / 32),
        (2, "RTN NVFP4 g16", 4 + 8 / 16 + 32 / (64 * 1024)),
        (3, "RTN NF4 g64 scale_dtype=bfloat16 clipping=Percentile(percent=99.9)", 4 + 16 / 64),
        (6, "RTN LUT3 per-channel", 3 + 8 * 16 / 1024),
    ],
)
def test_describe_and_bits_of_other_formats(spec_index, text, bits):
    spec = _new_format_specs()[spec_index]
    assert spec.describe() == text
    assert spec.bits_per_weight(64, 1024) == pytest.approx(bits, rel=1e-12)


def test_gptq_takes_every_format_and_squeezellm_only_lut():
    from lowbit.algorithms import SqueezeLLMConfig
    from lowbit.formats import FORMATS, LUTFormat

    for spec in _new_format_specs():  # GPTQ is the default algorithm
        assert LayerSpec(spec.fmt, spec.granularity).algorithm == GPTQConfig()
    with pytest.raises(ConfigError, match="algorithm 'squeezellm' does not support format 'mxfp4'"):
        LayerSpec(FORMATS.get("mxfp4")(), PerGroup(32), SqueezeLLMConfig())
    assert LayerSpec(LUTFormat(4), PerChannel(), SqueezeLLMConfig()).describe() == (
        "SQUEEZELLM LUT4 per-channel"
    )


def test_squeezellm_and_group_aware_round_trip_in_a_plan():
    from lowbit.algorithms import SqueezeLLMConfig
    from lowbit.formats import LUTFormat

    sq = LayerSpec(LUTFormat(3), PerChannel(), SqueezeLLMConfig(0.01, 20, 1e-4, "uniform"))
    gar = LayerSpec(IntFormat(4), PerGroup(32), GPTQConfig(act_order="group_aware"))
    plan = Plan(default=sq, rules=(Rule("re:.*down_proj", gar),))
    assert sq.to_dict()["algorithm"] == {
        "name": "squeezellm",
        "outlier_fraction": 0.01,
        "iterations": 20,
        "tol": 1e-4,
        "sensitivity": "uniform",
    }
    assert gar.to_dict()["algorithm"]["act_order"] == "group_aware"
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert Plan.from_dict(plan.to_dict()).needs_calibration()
    assert not gar.saves_permutation  # groups stay contiguous: no permutation stored
    assert gar.bits_per_weight(64, 128) == 4 + 4 * 16 / 128
    bad = {**sq.to_dict(), "algorithm": {"name": "squeezellm", "outliers": 0.1}}
    with pytest.raises(ConfigError, match="outliers: unknown field in a SqueezeLLM"):
        LayerSpec.from_dict(bad)


def test_a_block_format_with_the_wrong_group_is_refused_early():
    from lowbit.formats import FORMATS

    with pytest.raises(ConfigError, match=r"mxfp4 uses blocks of 32.*got group 128"):
        LayerSpec(FORMATS.get("mxfp4")(), PerGroup(128), RTNConfig())
    data = _new_format_specs()[0].to_dict()
    data["granularity"] = {"type": "group", "size": 64}
    with pytest.raises(ConfigError, match="mxfp4 uses blocks of 32"):
        LayerSpec.from_dict(data)


def test_labels_tell_specs_apart() -> None:
    """Menus and tables key specs by label: every option that changes the result shows."""
    from lowbit.algorithms import GPTQConfig, RTNConfig
    from lowbit.formats import IntFormat, PerGroup
    from lowbit.formats.clipping import MSEClip
    from lowbit.formats.codebook import NF4Format

    assert LayerSpec(IntFormat(4), PerGroup(64), GPTQConfig()).describe() == "GPTQ W4 g64 sym"
    specs = [
        LayerSpec(NF4Format(), PerGroup(64), RTNConfig()),
        LayerSpec(NF4Format(), PerGroup(64), RTNConfig(clipping=MSEClip())),
        LayerSpec(IntFormat(4), PerGroup(64), GPTQConfig(act_order="group")),
        LayerSpec(IntFormat(4), PerGroup(64), GPTQConfig()),
        LayerSpec(IntFormat(4, scale_dtype="float32"), PerGroup(64), GPTQConfig()),
    ]
    assert len({s.describe() for s in specs}) == len(specs)
