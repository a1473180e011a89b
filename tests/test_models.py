"""Model presets: the pinned tiny model and its recipe, the SmolLM2 GGUF conversion, plain folders."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlft.engines import HFEngine, SamplingParams
from rlft.errors import UsageError
from rlft.models import PRESETS, build_info, default_cache_dir, load_model
from rlft.models.base import load_folder
from rlft.models.cache import cached_build
from rlft.models.muon import Muon
from rlft.models.tiny import TINY_DIR, TINY_SHA256, build_char_tokenizer, load_tiny, sha256_file

ROOT = Path(__file__).parents[1]


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


def test_tiny_preset_is_the_pinned_model(tiny):
    model, tok = tiny
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_params <= 3_000_000
    assert model.config.model_type == "llama" and next(model.parameters()).dtype == torch.float32
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert not getattr(tok, "chat_template", None)
    assert Path(model.name_or_path) == TINY_DIR  # loaded from the shipped folder, nothing built
    text = "Question: What is 12 * -3?\nAnswer:"
    assert tok(text)["input_ids"] == build_char_tokenizer()(text)["input_ids"]
    info = build_info(model)
    assert info["preset"] == "tiny" and info["params"] == n_params and info["reached_target"]
    assert info["cpu"] and info["torch"] and info["history"]
    # competent but imperfect: room for RL in both directions
    assert 0.15 <= info["test_sampled_accuracy"] <= 0.65
    assert info["test_greedy_accuracy"] >= info["test_sampled_accuracy"] - 0.05


def test_every_shipped_file_is_pinned_by_its_sha256():
    shipped = {p.name for p in TINY_DIR.iterdir()}
    assert shipped == set(TINY_SHA256), "every file of rlft/assets/tiny must have its sha256 in TINY_SHA256"
    assert all(sha256_file(TINY_DIR / name) == digest for name, digest in TINY_SHA256.items())


def test_tiny_reload_is_identical(tiny):
    model, _ = tiny
    again, _ = load_model("tiny")
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    half, _ = load_model("tiny", dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("damage", ["flip a byte", "delete"])
def test_damaged_pinned_file_is_a_one_line_error(tmp_path, damage):
    folder = tmp_path / "tiny"
    shutil.copytree(TINY_DIR, folder)
    target = folder / "model.safetensors"
    if damage == "delete":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 1
        target.write_bytes(bytes(data))
    with pytest.raises(UsageError) as err:
        load_tiny(tmp_path, folder=folder)
    message = str(err.value)
    assert "\n" not in message and str(target) in message and "restore it" in message


def test_recipe_runs_a_few_steps_and_reports(tmp_path):
    """The documented rebuild command, cut to 4 steps: progress bar, verdict, a loadable folder."""
    out = tmp_path / "tiny"
    done = subprocess.run([sys.executable, "-m", "rlft.models.tiny_recipe", "--out", str(out), "--max-steps", "4",
                           "--coarse-eval-every", "2", "--eval-problems", "8", "--test-problems", "8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny recipe" in done.stderr and "4/4" in done.stderr  # the progress bar
    assert "another CPU gives another model" in done.stdout
    assert "did NOT reach the target after 4 steps" in done.stdout
    assert "differs from the pinned model" in done.stdout and '"model.safetensors": "' in done.stdout
    info = json.loads((out / "build_info.json").read_text())
    assert info["steps"] == 4 and not info["reached_target"] and [h["step"] for h in info["history"]] == [2, 4]
    assert info["cpu"] and info["test_problems"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no lock or temporary folder left
    model, tok = load_folder(out, torch.float32)
    assert sum(p.numel() for p in model.parameters()) == info["params"] and len(tok) == len(build_char_tokenizer())

    again = subprocess.run([sys.executable, "-m", "rlft.models.tiny_recipe", "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "already exists" in again.stderr


def test_muon_in_bfloat16_takes_torch_muon_steps():
    """Our Muon is torch.optim.Muon with a choice of Newton-Schulz dtype: equal steps in bfloat16."""
    torch.manual_seed(0)
    weights = [torch.randn(16, 48), torch.randn(48, 16)]
    ours = [torch.nn.Parameter(w.clone()) for w in weights]
    theirs = [torch.nn.Parameter(w.clone()) for w in weights]
    a = Muon(ours, lr=0.02, ns_dtype=torch.bfloat16)
    b = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.0)
    for _ in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
    assert any(not torch.equal(p, w) for p, w in zip(ours, weights))


def test_cached_build_is_atomic(tmp_path):
    final = tmp_path / "thing"
    calls = []

    def failing(tmp: Path) -> None:
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cached_build(final, failing)
    assert not final.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["thing.lock"]  # no half-built folder left

    def good(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "weights").write_text("w")
        (tmp / "build_info.json").write_text(json.dumps({"ok": True}))

    assert cached_build(final, good) == final and (final / "weights").read_text() == "w"
    assert cached_build(final, good) == final and len(calls) == 1  # second call: already built


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
