"""The API's common ground: model sources, the runtime, text windows, outputs and provenance."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowbit import __version__
from lowbit._io import (
    check_new_output,
    figures_sha256,
    library_versions,
    machine_info,
    output_sha256,
    peak_rss_bytes,
    write_json,
)
from lowbit.errors import ConfigError, DataError
from lowbit.evaluation.bos import BosChoice, BosPolicy, check_policy
from lowbit.plan import LayerSpec, Plan, uniform_plan
from lowbit.runtime import RuntimeConfig

if TYPE_CHECKING:
    import torch

    from lowbit.models.sources import ModelHandle
    from lowbit.runtime import Runtime

JsonDict = dict[str, Any]
DEFAULT_TEXT = "builtin:python-docs"


@dataclass(frozen=True)
class TextConfig:
    """A text source spec (path, ``builtin:NAME`` or ``NAME:CONFIG:SPLIT``) cut into windows;
    ``bos``: whether each window starts with the tokenizer's BOS token (auto: when the
    tokenizer adds one by default; always; never; see :mod:`lowbit.evaluation.bos`)."""

    source: str | None = None  # None: the default text, stated in the output and the result
    ctx: int = 512
    windows: int | None = 40
    seed: int = 0
    bos: BosPolicy = "auto"
    defaulted: bool = False  # set when ``source`` was not given

    def __post_init__(self) -> None:
        if self.source is None:
            object.__setattr__(self, "source", DEFAULT_TEXT)
            object.__setattr__(self, "defaulted", True)
        check_policy(self.bos)
        if self.ctx < 2:
            raise ConfigError(f"ctx must be at least 2 tokens, got {self.ctx}")
        if self.windows is not None and self.windows <= 0:
            raise ConfigError(f"the number of windows must be positive, got {self.windows}")


@dataclass(frozen=True)
class Windows:
    """Token windows (n, ctx) int64, what they are (source, fingerprint, selection, BOS) and
    the BOS choice they were cut with (default: none, as for windows made by hand)."""

    ids: torch.Tensor
    info: JsonDict = field(default_factory=dict)
    bos: BosChoice = field(default_factory=BosChoice)
    held_out: torch.Tensor | None = None  # calibration only, when asked: windows outside ids'


def load(model: str, *, allow_pickle: bool = False) -> ModelHandle:
    """Resolve a model source (HF directory, GGUF file, built-in name) to a handle."""
    from lowbit.models.sources import resolve_model

    return resolve_model(model, allow_pickle=allow_pickle)


def runtime(cfg: RuntimeConfig | None = None) -> Runtime:
    """The device, compute dtype and memory budget for ``cfg`` on this machine (default:
    the first GPU in bfloat16, else the CPU in float32)."""
    from lowbit.runtime import resolve_runtime

    return resolve_runtime(cfg)


def text_windows(
    handle: ModelHandle, cfg: TextConfig, *, calibration: bool, held_out: int = 0
) -> Windows:
    """Tokenize ``cfg.source`` once and cut evaluation (consecutive) or calibration (seeded
    random) windows, each starting with BOS when ``cfg.bos`` resolves so for the model's
    tokenizer; records the source's fingerprint, the selection and the BOS choice.
    ``held_out`` (calibration only): also that many windows of the same text overlapping no
    calibration window (:func:`lowbit.evaluation.text.held_out_windows`), in ``held_out``."""
    if held_out < 0:
        raise ConfigError(
            f"held_out (windows outside the calibration's) must be 0 or more, got {held_out}"
        )
    if held_out and not calibration:
        raise ConfigError("held-out windows are drawn beside calibration windows only")
    from lowbit.evaluation import text as T
    from lowbit.evaluation.bos import resolve_bos

    limit = getattr(handle.config, "max_position_embeddings", None)
    if limit is not None and cfg.ctx > limit:
        raise DataError(
            f"ctx {cfg.ctx} is longer than {handle.source} supports ({limit} positions); "
            f"use --ctx {limit} or less"
        )
    assert cfg.source is not None  # set by TextConfig
    source = T.parse_text_source(cfg.source, part="calib" if calibration else "eval")
    raw = T.load_text(source)
    tokenizer = handle.load_tokenizer()
    bos = resolve_bos(tokenizer, cfg.bos, f"the tokenizer of {handle.source}")
    ids = T.tokenize(tokenizer, raw)
    what = f"text {source.describe()}"
    if calibration:
        n = cfg.windows or 128
        windows = T.calibration_windows(ids, cfg.ctx, n, cfg.seed, what, bos.token_id)
    else:
        windows = T.eval_windows(ids, cfg.ctx, cfg.windows, what, bos.token_id)
    extra = None
    if held_out:
        n = cfg.windows or 128
        extra = T.held_out_windows(ids, cfg.ctx, held_out, cfg.seed, n, what, bos.token_id)
    info = {
        "source": source.describe(),
        "fingerprint": T.text_fingerprint(raw),
        "tokens": int(ids.numel()),
        "windows": int(windows.shape[0]),
        "ctx": cfg.ctx,
        "selection": f"seeded random offsets, seed {cfg.seed}"
        if calibration
        else "consecutive non-overlapping windows from the start",
        "bos": bos.to_dict(),
        "source_given": not cfg.defaulted,
    }
    if held_out:
        assert extra is not None
        info["held_out"] = {
            "windows": held_out,
            "sha256": hashlib.sha256(extra.numpy().tobytes()).hexdigest()[:16],
            "selection": f"seeded random offsets (seed {cfg.seed} + {T.HELD_OUT_SALT:#x}) "
            "overlapping no calibration window",
        }
    if cfg.defaulted:
        option, use = (
            ("--calib-text", "calibrated") if calibration else ("--eval-text", "evaluated")
        )
        info["default_note"] = (
            f"no {option} given: {use} on the default text {source.describe()} (lowbit's "
            f"built-in Python documentation); give {option} to choose the text"
        )
    return Windows(windows, info, bos, extra)


def check_distinct_texts(evaluation: Windows, calibration: Windows) -> None:
    """Calibration must not see the evaluation text."""
    if evaluation.info["fingerprint"] == calibration.info["fingerprint"]:
        raise ConfigError(
            f"the calibration text {calibration.info['source']} is the evaluation text "
            f"{evaluation.info['source']}; calibrate on another text (e.g. a validation split)"
        )


def check_outputs(*paths: Path | None, overwrite: bool = False) -> None:
    """Refuse existing outputs before any work is done."""
    for path in paths:
        if path is not None:
            check_new_output(Path(path), overwrite=overwrite)


def provenance(
    command: str,
    handle: ModelHandle,
    config: JsonDict,
    data: JsonDict,
    timings: dict[str, float],
    runtime: Runtime | None = None,
) -> JsonDict:
    return {
        "lowbit_version": __version__,
        "command": command,
        "model": handle.describe(),
        "data": data,
        "config": config,
        "timings_s": timings,
        "peak_rss_bytes": peak_rss_bytes(),
        "runtime": None if runtime is None else runtime.describe(),
        "machine": machine_info(),
        "libraries": library_versions(),
        "created_unix": time.time(),
    }


def provenance_light(command: str) -> JsonDict:
    """Provenance for a result that reads no model weights."""
    return {
        "lowbit_version": __version__,
        "command": command,
        "machine": machine_info(),
        "libraries": library_versions(),
        "created_unix": time.time(),
    }


def write_result(
    path: Path, result: JsonDict, *, outputs: dict[str, Path] | None = None, overwrite: bool = False
) -> None:
    """Write ``result`` with ``content_sha256``: the sha256 of its figures (what was measured,
    without times or machine) and of each of ``outputs`` (name → a file, or a folder's
    tensors), so that two runs can be compared by hash."""
    hashes = {"figures": figures_sha256(result)}
    hashes |= {name: output_sha256(Path(p)) for name, p in (outputs or {}).items()}
    write_json(path, {**result, "content_sha256": hashes}, overwrite=overwrite)


def spec_from_options(
    bits: int,
    group_size: int,
    symmetric: bool,
    algorithm: str,
    act_order: str = "static",
    damp: float = 0.01,
    block_size: int = 128,
    granularity: str = "group",
    fmt: str = "int",
    clipping: str = "minmax",
) -> LayerSpec:
    """A LayerSpec from typed command-line options; unknown names get suggestions. ``fmt`` is a
    registered format name (``int`` and ``lut`` take ``bits``; ``int`` takes ``symmetric``);
    ``clipping`` (minmax, mse, or percentile:P) applies to RTN."""
    from lowbit.algorithms import ALGORITHMS, AlgorithmConfig, GPTQConfig, RTNConfig
    from lowbit.formats import FORMATS, IntFormat, PerChannel, PerGroup, PerTensor
    from lowbit.formats.clipping import MinMax, MSEClip, Percentile

    fmt = fmt.lower()  # registered names are case-insensitive
    grans = {"group": lambda: PerGroup(group_size), "channel": PerChannel, "tensor": PerTensor}
    if granularity not in grans:
        raise ConfigError(f"unknown granularity {granularity!r}; use group, channel or tensor")
    make = FORMATS.get(fmt)
    weight_fmt = (
        IntFormat(bits, symmetric) if fmt == "int" else make(bits) if fmt == "lut" else make()
    )
    kind, _, arg = clipping.partition(":")
    clips = {"minmax": MinMax, "mse": MSEClip, "percentile": lambda: Percentile(float(arg or 99.9))}
    if kind not in clips:
        raise ConfigError(f"unknown clipping {clipping!r}; use minmax, mse or percentile[:P]")
    config_type = ALGORITHMS.get(algorithm)
    if kind != "minmax" and config_type is not RTNConfig:
        raise ConfigError(
            f"--clipping {clipping} applies to RTN; {algorithm} chooses its own ranges"
        )
    if config_type is GPTQConfig:
        algo: AlgorithmConfig = GPTQConfig(damp=damp, block_size=block_size, act_order=act_order)
    elif config_type is RTNConfig:
        algo = RTNConfig(clipping=clips[kind]())
    else:
        algo = config_type()
    return LayerSpec(weight_fmt, grans[granularity](), algo)


def plan_from_options(spec: LayerSpec) -> Plan:
    return uniform_plan(spec)
