"""Prompts of exact token sizes, distinct per request, and the users x prompt-size matrix.

How a prompt of P tokens is built, fast even for 1024 of them:

1. A long random text of common words is tokenized once (without special tokens): the *body* ids.
2. Per size P, the body is cut to the right length at the id level and decoded once, adjusting the cut
   by the difference until the tokenizer counts exactly P for `marker_0 + body` (a few round trips).
3. Request i gets its own *marker*: three words drawn from a set of words that are one token each in
   this tokenizer (a space-separated word cannot merge with its neighbours in the usual pre-tokenizers),
   so every marker has the same length and the prompts stay exactly P tokens. The marker goes first, so
   no two prompts share their first KV-cache block (no accidental prefix-cache hits); with
   `shared_prefix=True` it goes last instead, and the body is a prefix every request shares.
4. Every prompt is then counted; the rare one that is off is fixed alone. Sizes are cached per P.

Counting uses the server's `POST /tokenize` (vLLM: `{"model", "prompt"}` or, for chat, `{"model",
"messages", "add_generation_prompt"}`, which applies the chat template, so a chat prompt is P tokens
*after* templating). Without `/tokenize`, a local Hugging Face tokenizer directory (`tokenizer_path`)
is used: with `transformers` installed chat prompts are templated too; with only `tokenizers` the chat
template cannot be applied, the *content* is P tokens and the difference shows up, counted, as
`expected_prompt_tokens` != `usage.prompt_tokens` in every record.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from ..errors import PromptSizingError as PromptSizingError  # defined there; imported from here too

# Common, short English words: a realistic token mix for any tokenizer.
WORDS = tuple("""
the of and to in is was for on that with as by at from his her this which or an are had be it not
have one new were their but all after first two been also other has who more time they its year
city school when years during into where over most world made she only later three team state some
up many while season may can there about under between music use known state water river light
house game small part long power high life film work north south east west early local family
under since major back group days open field left road best well second found book story play
name line point music place might great right three every young still order money study level
""".split())
_SEED = 1234


class TokenCounter(Protocol):
    """Counts, encodes and decodes the way the server will."""

    async def count(self, text: str) -> int:
        """Tokens of `text` as the server counts the prompt (special tokens, chat template)."""

    async def encode_plain(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens or template."""

    async def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`."""


class ServerTokenizer:
    """`/tokenize` and `/detokenize` of a vLLM(-like) server."""

    def __init__(self, client: httpx.AsyncClient, model: str, api: str = "completions") -> None:
        self.client = client  # bound to the server's base URL (control.Control.async_client)
        self.model = model
        self.api = api

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.client.post(path, json=body)
        if r.status_code != 200:
            raise PromptSizingError(f"POST {path} answered HTTP {r.status_code}: {r.text[:300]}")
        data: dict[str, Any] = r.json()
        return data

    async def count(self, text: str) -> int:
        if self.api == "chat":
            body = {"model": self.model, "messages": [{"role": "user", "content": text}],
                    "add_generation_prompt": True}
        else:
            body = {"model": self.model, "prompt": text}
        return int((await self._post("/tokenize", body))["count"])

    async def encode_plain(self, text: str) -> list[int]:
        data = await self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        return list(data["tokens"])

    async def decode(self, ids: Sequence[int]) -> str:
        return str((await self._post("/detokenize", {"model": self.model, "tokens": list(ids)}))["prompt"])

    @staticmethod
    async def available(client: httpx.AsyncClient, model: str) -> bool:
        """Whether the server answers `/tokenize` (vLLM does; most hosted APIs do not)."""
        try:
            r = await client.post("/tokenize", json={"model": model, "prompt": "hello"})
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and "count" in r.text


class LocalTokenizer:
    """A Hugging Face tokenizer directory: `transformers` if installed (chat template), else `tokenizers`."""

    def __init__(self, path: str | Path, api: str = "completions") -> None:
        self.api = api
        self.templated = False
        try:
            from transformers import AutoTokenizer

            self._hf: Any = AutoTokenizer.from_pretrained(str(path))
            self.templated = getattr(self._hf, "chat_template", None) is not None
            self._fast: Any = None
        except ImportError:
            from tokenizers import Tokenizer

            self._hf = None
            self._fast = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))

    async def count(self, text: str) -> int:
        if self._hf is None:
            return len(self._fast.encode(text, add_special_tokens=True).ids)
        if self.api == "chat" and self.templated:
            ids = self._hf.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=True)
            return len(ids["input_ids"] if isinstance(ids, dict) else ids)
        return len(self._hf(text, add_special_tokens=True)["input_ids"])

    async def encode_plain(self, text: str) -> list[int]:
        if self._hf is None:
            return list(self._fast.encode(text, add_special_tokens=False).ids)
        return list(self._hf(text, add_special_tokens=False)["input_ids"])

    async def decode(self, ids: Sequence[int]) -> str:
        if self._hf is None:
            return str(self._fast.decode(list(ids)))
        return str(self._hf.decode(list(ids)))


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt and the number of tokens the server will count for it."""

    text: str
    tokens: int | None  # None: sent as it is, its size is the server's to say (a trace line's text)


def random_text(n_words: int, seed: int = _SEED) -> str:
    """Deterministic filler text of `n_words` common words."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


class PromptFactory:
    """Builds (and caches) distinct prompts of exactly P tokens; see the module docstring for how."""

    MARKER_WORDS = 3
    MAX_FIX_ROUNDS = 12  # round trips to converge on a size; BPE boundary effects need 1-3
    VERIFY_CONCURRENCY = 16

    def __init__(self, counter: TokenCounter, *, shared_prefix: bool = False, verify_all: bool = False) -> None:
        self.counter = counter
        self.shared_prefix = shared_prefix
        self.verify_all = verify_all  # count every prompt, not a sample (cheap with a local tokenizer)
        self._body_ids: list[int] = []
        self._markers: list[str] = []
        self._unit_words: list[str] = []
        self._bodies: dict[int, tuple[str, int]] = {}  # P -> (body text, body ids used)
        self._cache: dict[int, list[Prompt]] = {}

    async def prompts(self, size: int, n: int) -> list[Prompt]:
        """`n` distinct prompts of exactly `size` tokens (PromptSizingError if impossible)."""
        cached = self._cache.setdefault(size, [])
        if len(cached) < n:
            cached.extend(await self._build(size, len(cached), n))
        return cached[:n]

    def compose(self, marker: str, body: str) -> str:
        """The prompt text: marker first (distinct prefixes) or last (shared prefix)."""
        return f"{body} {marker}" if self.shared_prefix else f"{marker} {body}"

    async def _build(self, size: int, start: int, stop: int) -> list[Prompt]:
        await self._ensure_markers(stop)
        body, _ = await self._body_for(size)
        texts = [self.compose(self._markers[i], body) for i in range(start, stop)]
        # Markers of single-token words cannot change the count, so a sample proves the construction;
        # if any is off, every prompt is counted. usage.prompt_tokens re-checks each request anyway.
        check = range(len(texts)) if self.verify_all else range(0, len(texts), max(1, len(texts) // 32))
        counts = dict(zip(check, await self._count_all([texts[i] for i in check])))
        if any(c != size for c in counts.values()) and len(counts) < len(texts):
            counts = dict(enumerate(await self._count_all(texts)))
        out = []
        for i, text in enumerate(texts):
            if counts.get(i, size) != size:  # rare: a marker merged with its neighbour; fit this one alone
                text = await self._fit(size, self._markers[start + i])
            out.append(Prompt(text, size))
        return out

    async def _count_all(self, texts: Sequence[str]) -> list[int]:
        sem = asyncio.Semaphore(self.VERIFY_CONCURRENCY)

        async def one(t: str) -> int:
            async with sem:
                return await self.counter.count(t)

        return list(await asyncio.gather(*(one(t) for t in texts)))

    async def _body_for(self, size: int) -> tuple[str, int]:
        if size not in self._bodies:
            self._bodies[size] = await self._fit_body(size, self._markers[0])
        return self._bodies[size]

    async def _fit(self, size: int, marker: str) -> str:
        return self.compose(marker, (await self._fit_body(size, marker))[0])

    async def _fit_body(self, size: int, marker: str) -> tuple[str, int]:
        """Cut the body ids so that `compose(marker, body)` counts exactly `size` tokens."""
        overhead = await self.counter.count(self.compose(marker, ""))
        if size < overhead:
            raise PromptSizingError(
                f"a prompt of {size} tokens is too short: this server's template and marker take {overhead}")
        n = size - overhead
        seen: set[int] = set()
        for _ in range(self.MAX_FIX_ROUNDS):
            await self._ensure_body(n + 64)
            body = await self.counter.decode(self._body_ids[:n]) if n > 0 else ""
            got = await self.counter.count(self.compose(marker, body))
            if got == size:
                return body, n
            seen.add(n)
            step = size - got
            n = max(0, n + step)
            if n in seen:  # oscillating around the target: try the neighbours one by one
                n = next((m for m in range(n - 3, n + 4) if m >= 0 and m not in seen), n + 1)
        raise PromptSizingError(f"could not build a prompt of exactly {size} tokens "
                                f"(last attempt counted {got})")

    async def _ensure_body(self, n_ids: int) -> None:
        words = max(256, n_ids)
        while len(self._body_ids) < n_ids:
            self._body_ids = await self.counter.encode_plain(random_text(words))
            words *= 2

    async def _ensure_markers(self, n: int) -> None:
        """At least `n` distinct markers of single-token words (same token count for every marker)."""
        if not self._unit_words:
            lens = await asyncio.gather(*(self.counter.encode_plain(" " + w) for w in WORDS))
            self._unit_words = sorted({w for w, ids in zip(WORDS, lens) if len(ids) == 1}) or list(WORDS)
        if len(self._markers) >= n:
            return
        # Deterministic: marker i depends only on the seed and on the words available.
        rng = random.Random(_SEED + len(self._markers))
        seen = set(self._markers)
        words = self._unit_words
        possible = len(words) ** self.MARKER_WORDS
        for _ in range(20 * n + 1000):  # bounded: with >= 50 words, collisions are rare
            if len(self._markers) >= n or len(seen) >= possible:
                break
            m = " ".join(rng.choice(words) for _ in range(self.MARKER_WORDS))
            if m not in seen:
                seen.add(m)
                self._markers.append(m)
        if len(self._markers) < n:
            raise PromptSizingError(f"cannot make {n} distinct prompt markers from this tokenizer's words")


def matrix(users: Sequence[int], prompt_tokens: Sequence[int]) -> list[tuple[int, int]]:
    """The cells of a users x prompt-size matrix, in run order: by prompt size, then users ascending.

    Small cells first, so a failure (context too short, server out of memory) shows up early.
    """
    return [(u, p) for p in sorted(dict.fromkeys(prompt_tokens)) for u in sorted(dict.fromkeys(users))]
