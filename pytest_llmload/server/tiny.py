"""The CPU default: a tiny Llama built locally, with no downloads.

`build_tiny_model()` makes a 2-layer Llama with random weights and a locally trained byte-level BPE
tokenizer, so vLLM can be exercised on a machine without a GPU or hub access. The build is
deterministic (same bytes every time), cached, verified by a sha256 manifest and atomic (built in a
temporary folder, then renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def default_cache_dir() -> Path:
    """$LLMLOAD_CACHE_DIR, else ~/.cache/pytest-llmload."""
    env = os.environ.get("LLMLOAD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pytest-llmload"


TINY_VERSION = "1"  # bump when anything below changes the built bytes
TINY_SEED = 20240607
TINY_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 32,
    "vocab_size": 4096,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "attention_bias": False,
    "mlp_bias": False,
    # Tied embeddings make the model echo its prompt; untied ones give varied output.
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
    "torch_dtype": "float32",
}
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3, matching the config above
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TINY_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json")
MANIFEST = "manifest.json"


def build_tiny_model(cache_dir: Path | None = None) -> Path:
    """The tiny model's folder under `cache_dir`, built (or rebuilt if damaged) when needed."""
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"tiny-{TINY_VERSION}"
    if verify_model_dir(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=cache_dir))
    try:
        write_tiny_model(staging)
        _install(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _install(staging: Path, target: Path) -> None:
    """Move a complete build into place; a damaged copy is moved aside first, never half-replaced."""
    if target.exists() and not verify_model_dir(target):
        aside = Path(tempfile.mkdtemp(prefix=".tiny-damaged-", dir=target.parent))
        try:
            target.rename(aside / "old")
        except FileNotFoundError:
            pass  # another process moved it away first
        shutil.rmtree(aside, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:
        # Another build won the race; its manifest was written last, so it is complete if present.
        if not verify_model_dir(target):
            raise


def verify_model_dir(path: Path) -> bool:
    """True when `path` holds every tiny-model file and each matches the manifest's sha256."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if sorted(files) != sorted(TINY_FILES) or manifest.get("version") != TINY_VERSION:
            return False
        return all(_sha256(path / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_tiny_model(folder: Path) -> None:
    """Write the tiny model's files into `folder`, the manifest last (it marks the build complete)."""
    _write_json(folder / "config.json", TINY_CONFIG)
    _write_json(folder / "generation_config.json",
                {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3})
    _write_tokenizer(folder)
    _write_weights(folder / "model.safetensors")
    manifest = {"version": TINY_VERSION, "files": {n: _sha256(folder / n) for n in TINY_FILES}}
    _write_json(folder / MANIFEST, manifest)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _lazy_import(module: str) -> Any:
    """Import a heavy optional dependency only when the tiny model is built."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"building the tiny model needs {module.split('.')[0]!r} ({exc}); "
            "install it with: pip install 'pytest-llmload[cpu]'"
        ) from exc


# ----- tokenizer

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vi", "so", "pe", "da", "gu", "shi", "ber", "tor",
              "an", "el", "in", "on", "ux", "ry", "qua", "zen", "mol", "fi", "ge", "hu", "jo", "wa")
_WORDS = ("the", "a", "of", "and", "to", "in", "is", "for", "on", "with", "that", "as", "server",
          "model", "token", "request", "user", "load", "test", "time", "fast", "slow", "memory",
          "data", "value", "first", "second", "result", "prompt", "answer", "question", "system")


def training_text(seed: int = TINY_SEED, lines: int = 6000) -> list[str]:
    """Generated, deterministic text to train the tokenizer on: words, pseudo-words, numbers, code."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(4, 16)):
            roll = rng.random()
            if roll < 0.45:
                words.append(rng.choice(_WORDS))
            elif roll < 0.85:
                words.append("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
            elif roll < 0.95:
                words.append(str(rng.randint(0, 10_000)))
            else:
                words.append(rng.choice(("(", ")", "=", "+", "{", "}", ":", "def", "return", "#")))
        sentence = " ".join(words)
        out.append(sentence[0].upper() + sentence[1:] + rng.choice((".", "?", "!", ",")))
    return out


def _write_tokenizer(folder: Path) -> None:
    tk = _lazy_import("tokenizers")
    tokenizer = tk.Tokenizer(tk.models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=TINY_CONFIG["vocab_size"], special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    # Prepend BOS like Llama tokenizers do, so prompt token counts match what chat models see.
    tokenizer.post_processor = tk.processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer.save(str(folder / "tokenizer.json"), pretty=True)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    _write_json(folder / "special_tokens_map.json", specials)
    _write_json(folder / "tokenizer_config.json", {
        **specials,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": TINY_CONFIG["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
    })


# ----- weights


def _weight_shapes() -> list[tuple[str, tuple[int, ...], float]]:
    """(name, shape, std) of every tensor, in a fixed order; std 0 means RMSNorm weights (ones)."""
    c = TINY_CONFIG
    hidden, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    attn = c["num_attention_heads"] * c["head_dim"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    std = c["initializer_range"]
    shapes: list[tuple[str, tuple[int, ...], float]] = [("model.embed_tokens.weight", (vocab, hidden), std)]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (attn, hidden), std),
            (p + "self_attn.k_proj.weight", (kv, hidden), std),
            (p + "self_attn.v_proj.weight", (kv, hidden), std),
            (p + "self_attn.o_proj.weight", (hidden, attn), std),
            (p + "mlp.gate_proj.weight", (inter, hidden), std),
            (p + "mlp.up_proj.weight", (inter, hidden), std),
            (p + "mlp.down_proj.weight", (hidden, inter), std),
            (p + "input_layernorm.weight", (hidden,), 0.0),
            (p + "post_attention_layernorm.weight", (hidden,), 0.0),
        ]
    # A wide lm_head spreads the logits so greedy decoding does not settle on one token.
    shapes += [("model.norm.weight", (hidden,), 0.0), ("lm_head.weight", (vocab, hidden), 0.5)]
    return shapes


def tiny_weights(seed: int = TINY_SEED) -> dict[str, Any]:
    """The tiny model's float32 tensors as numpy arrays (numpy's legacy generator: stable streams)."""
    np = _lazy_import("numpy")
    rng = np.random.RandomState(seed)
    tensors = {}
    for name, shape, std in _weight_shapes():
        if std == 0.0:
            tensors[name] = np.ones(shape, dtype=np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    # Zero logits for the special tokens: otherwise greedy output is mostly specials (stripped, so
    # empty text) and EOS ends requests early.
    tensors["lm_head.weight"][: len(SPECIAL_TOKENS)] = 0.0
    return tensors


def _write_weights(path: Path) -> None:
    st_numpy = _lazy_import("safetensors.numpy")
    st_numpy.save_file(tiny_weights(), str(path), metadata={"format": "pt"})
