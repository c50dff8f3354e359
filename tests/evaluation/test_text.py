"""Text sources and windows."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import DataError
from lowbit.evaluation import text as T


def test_windows_are_consecutive_and_capped():
    ids = torch.arange(1000)
    w = T.eval_windows(ids, 128, 3, "t")
    assert w.shape == (3, 128)
    assert torch.equal(w.reshape(-1), torch.arange(384))
    assert T.eval_windows(ids, 128, None, "t").shape == (7, 128)


def test_calibration_draw_is_seeded():
    ids = torch.arange(5000)
    a = T.calibration_windows(ids, 64, 10, 0, "t")
    b = T.calibration_windows(ids, 64, 10, 0, "t")
    c = T.calibration_windows(ids, 64, 10, 1, "t")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(10, 63, dtype=torch.long))


@pytest.mark.parametrize("bos", [None, 9999])
def test_held_out_windows_overlap_no_calibration_window(bos):
    """The held-out draw is seeded, leaves the calibration draw as it was, and each window's
    text (ids are positions here) shares no token with a calibration window nor another."""
    ids = torch.arange(5000)
    calib = T.calibration_windows(ids, 64, 20, 3, "t", bos=bos)
    held = T.held_out_windows(ids, 64, 12, 3, 20, "t", bos=bos)
    assert torch.equal(held, T.held_out_windows(ids, 64, 12, 3, 20, "t", bos=bos))
    assert torch.equal(calib, T.calibration_windows(ids, 64, 20, 3, "t", bos=bos))
    assert held.shape == (12, 64)
    text = 0 if bos is None else 1
    if bos is not None:
        assert torch.equal(held[:, 0], torch.full((12,), bos))
    seen = set(calib[:, text:].reshape(-1).tolist())
    held_text = held[:, text:].reshape(-1).tolist()
    assert not seen & set(held_text) and len(set(held_text)) == len(held_text)
    steps = held[:, text + 1 :] - held[:, text:-1]  # consecutive text
    assert torch.equal(steps, torch.ones_like(steps))


def test_a_window_blocks_exactly_the_offsets_that_would_overlap_it():
    free = torch.ones(20, dtype=torch.bool)
    T.block_offsets(free, 5, 4)  # [5, 9): offsets 2..8 overlap it, 1 and 9 are adjacent
    assert free.nonzero().squeeze(1).tolist() == [0, 1, *range(9, 20)]
    T.block_offsets(free, 0, 4)
    assert free.nonzero().squeeze(1).tolist() == list(range(9, 20))


def test_held_out_draws_are_prefix_stable():
    """The first k windows of an n-window draw are the k-window draw (a probe of k windows and
    selection windows after it come from one draw)."""
    ids = torch.arange(5000)
    assert torch.equal(
        T.held_out_windows(ids, 64, 8, 0, 20, "t")[:3], T.held_out_windows(ids, 64, 3, 0, 20, "t")
    )


def test_held_out_windows_that_do_not_fit_are_refused():
    ids = torch.arange(700)
    with pytest.raises(DataError, match=r"text x: found \d+ of 20 held-out windows of 64"):
        T.held_out_windows(ids, 64, 20, 0, 8, "text x")
    # a text with room for one window beside no calibration window gives exactly that one
    assert torch.equal(T.held_out_windows(torch.arange(64), 64, 1, 0, 0, "t"), ids[None, :64])
    # one free offset among a million is found (drawn among the free ones after the tries)
    free = torch.zeros(1_000_000, dtype=torch.bool)
    free[123_457] = True
    assert T._draw_free(free, torch.Generator().manual_seed(0)) == 123_457
    assert T._draw_free(torch.zeros(10, dtype=torch.bool), torch.Generator()) is None


def test_bos_windows_are_bos_and_consecutive_text():
    """With BOS each window is [BOS] + ctx−1 text tokens; consecutive windows advance by ctx−1,
    so every text token of the windows is a target exactly once."""
    ids = torch.arange(1000)
    w = T.eval_windows(ids, 128, 3, "t", bos=9999)
    assert w.shape == (3, 128)
    assert torch.equal(w[:, 0], torch.full((3,), 9999))
    assert torch.equal(w[:, 1:].reshape(-1), torch.arange(3 * 127))
    assert T.eval_windows(ids, 128, None, "t", bos=9999).shape == (1000 // 127, 128)


def test_bos_calibration_windows_keep_the_draw_shape():
    ids = torch.arange(5000)
    a = T.calibration_windows(ids, 64, 10, 0, "t", bos=9999)
    assert a.shape == (10, 64) and torch.equal(a[:, 0], torch.full((10,), 9999))
    assert torch.equal(a[:, 2:] - a[:, 1:-1], torch.ones(10, 62, dtype=torch.long))
    assert int(a[:, 1:].max()) < 5000


def test_text_shorter_than_a_bos_window():
    T.eval_windows(torch.arange(63), 64, None, "t", bos=1)  # BOS and 63 text tokens fit
    with pytest.raises(DataError, match=r"shorter than one window of 64 \(BOS and 63 text"):
        T.eval_windows(torch.arange(62), 64, None, "text x", bos=1)


def test_text_shorter_than_a_window():
    with pytest.raises(DataError, match="shorter than one window of 512"):
        T.eval_windows(torch.arange(100), 512, None, "text x")


def test_builtin_parts_share_no_paragraph():
    ev = T.load_text(T.BuiltinText("python-docs", "eval"))
    ca = T.load_text(T.BuiltinText("python-docs", "calib"))
    assert len(ev) > 100_000 and len(ca) > 100_000
    long_paragraphs = {p for p in ev.split("\n\n") if len(p) > 300}
    assert long_paragraphs
    assert not any(p in ca for p in long_paragraphs)


def test_parse_sources(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    assert T.parse_text_source(str(f)) == T.FileText(f)
    assert T.parse_text_source("builtin:python-docs", part="calib") == T.BuiltinText(
        "python-docs", "calib"
    )
    assert T.parse_text_source("wikitext:wikitext-2-raw-v1:test") == T.HubText(
        "wikitext", "wikitext-2-raw-v1", "test"
    )
    with pytest.raises(DataError, match="unknown built-in text"):
        T.parse_text_source("builtin:nope")
    with pytest.raises(DataError, match="neither an existing file"):
        T.parse_text_source("/no/such/file.txt")
