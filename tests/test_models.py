"""Model presets: the tiny built-and-cached model, the SmolLM2 GGUF conversion, plain folders."""

import json
import os
import time
from pathlib import Path

import pytest
import torch

from rlft.engines import HFEngine, SamplingParams
from rlft.errors import UsageError
from rlft.models import (
    PRESETS,
    TinyConfig,
    _cached,
    build_char_tokenizer,
    build_info,
    default_cache_dir,
    load_model,
    tiny_dir,
)


def test_presets_registered():
    assert {"tiny", "smollm2-135m"} <= set(PRESETS.available())


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RLFT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RLFT_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "rlft"


def test_char_tokenizer():
    tok = build_char_tokenizer()
    text = "Question: What is 12 * -3?\nAnswer: -36"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok(" 68", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(c) for c in " 68"]
    assert not getattr(tok, "chat_template", None)
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    assert len(tok) < 128


def test_tiny_preset(tiny):
    model, tok = tiny
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_params <= 3_000_000
    assert model.config.model_type == "llama"
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert not getattr(tok, "chat_template", None)
    info = build_info(model)
    assert info is not None and info["preset"] == "tiny" and info["params"] == n_params
    for key in ("steps", "seconds", "test_greedy_accuracy", "test_sampled_accuracy", "history"):
        assert key in info
    # competent but imperfect: room for RL in both directions
    assert 0.15 <= info["test_sampled_accuracy"] <= 0.65
    assert info["test_greedy_accuracy"] >= info["test_sampled_accuracy"] - 0.05
    assert Path(model.name_or_path) == tiny_dir(default_cache_dir(), TinyConfig(), 0)


def test_tiny_reload_is_fast_and_identical(tiny):
    model, _ = tiny
    start = time.perf_counter()
    again, tok = load_model("tiny")
    seconds = time.perf_counter() - start
    assert seconds < 5  # typically ~0.1 s; generous for a loaded machine
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    half, _ = load_model("tiny", dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16


def test_tiny_cache_key_depends_on_seed_and_config(tmp_path):
    base = tiny_dir(tmp_path)
    assert base == tiny_dir(tmp_path, TinyConfig(), 0)
    assert tiny_dir(tmp_path, TinyConfig(), 1) != base
    assert tiny_dir(tmp_path, TinyConfig(lr=1.0), 0) != base


def test_cached_build_is_atomic(tmp_path):
    final = tmp_path / "thing"
    calls = []

    def failing(tmp: Path) -> None:
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        _cached(final, failing)
    assert not final.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["thing.lock"]  # no half-built folder left

    def good(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "weights").write_text("w")
        (tmp / "build_info.json").write_text(json.dumps({"ok": True}))

    assert _cached(final, good) == final and (final / "weights").read_text() == "w"
    assert _cached(final, good) == final and len(calls) == 1  # second call: already built


def test_smollm2_converts_and_generates(smollm2):
    model, tok = smollm2
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 140e6
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert getattr(tok, "chat_template", None)
    info = build_info(model)
    assert info["preset"] == "smollm2-135m" and "seconds" in info
    gen = HFEngine(model, tok).generate(["The capital of France is"], 1,
                                        SamplingParams(temperature=0.0, max_new_tokens=4))
    assert gen.completion_ids.shape[1] >= 1 and "Paris" in gen.texts[0]


def test_unknown_local_path_is_a_usage_error(tmp_path):
    for spec in (str(tmp_path / "missing"), "./no/such/model"):
        with pytest.raises(UsageError) as err:
            load_model(spec)
        assert "\n" not in str(err.value) and "no such folder" in str(err.value)


def test_unavailable_hub_name_is_a_usage_error():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(UsageError) as err:
        load_model("nonexistent-org-rlft/nonexistent-model")
    assert "\n" not in str(err.value)


def test_local_folder_loads(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, loaded_tok = load_model(str(tmp_path / "m"))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters()))
    assert loaded_tok.pad_token_id == tok.pad_token_id
