"""Prompts of exact token sizes (server /tokenize and a local tokenizer), distinct, cached; the matrix."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pytest_llmload.control import async_client
from pytest_llmload.testing.fakeserver import FakeServer, FakeTokenizer
from pytest_llmload.load.workload import (LocalTokenizer, PromptFactory, PromptSizingError, ServerTokenizer, matrix,
                                     random_text)


async def _build(base_url: str, api: str, sizes: list[int], n: int, **kw: bool) -> dict[int, list[str]]:
    async with async_client(base_url, timeout_s=30) as http:
        factory = PromptFactory(ServerTokenizer(http, "fake-model", api), **kw)
        return {size: [p.text for p in await factory.prompts(size, n)] for size in sizes}


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_prompts_are_exactly_sized_distinct_and_deterministic(llm_fake_server: FakeServer, api: str) -> None:
    sizes = [12, 31, 100, 296, 1000]
    built = asyncio.run(_build(llm_fake_server.base_url, api, sizes, 20, verify_all=True))
    tok = FakeTokenizer()
    for size, texts in built.items():
        counted = [len(tok.encode(tok.chat_template([{"content": t}]) if api == "chat" else t)) for t in texts]
        assert counted == [size] * 20
        assert len(set(texts)) == 20
        # distinct from the first words on: no shared prefix to hit a prefix cache
        assert len({t.split()[0:3].__repr__() for t in texts}) == 20
    assert built == asyncio.run(_build(llm_fake_server.base_url, api, sizes, 20))


def test_shared_prefix_puts_the_distinct_part_last(llm_fake_server: FakeServer) -> None:
    texts = asyncio.run(_build(llm_fake_server.base_url, "completions", [200], 8, shared_prefix=True))[200]
    assert len({t.split()[:40].__repr__() for t in texts}) == 1 and len(set(texts)) == 8


def test_1024_prompts_are_quick_and_cached(llm_fake_server: FakeServer) -> None:
    async def run() -> tuple[float, float]:
        async with async_client(llm_fake_server.base_url, timeout_s=30) as http:
            factory = PromptFactory(ServerTokenizer(http, "fake-model"))
            t = time.perf_counter()
            first = await factory.prompts(512, 1024)
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            again = await factory.prompts(512, 1024)
            assert first == again and len({p.text for p in first}) == 1024
            return t1, time.perf_counter() - t

    built, cached = asyncio.run(run())
    assert built < 10 and cached < 0.05


def test_too_small_a_size_is_refused(llm_fake_server: FakeServer) -> None:
    with pytest.raises(PromptSizingError, match="too short"):
        asyncio.run(_build(llm_fake_server.base_url, "completions", [2], 1))


def _tokenizer_dir(path: Path) -> Path:
    """A small byte-level BPE trained here, saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>"])
    tok.train_from_iterator([random_text(200, seed=s) for s in range(50)], trainer)
    tok.save(str(path / "tokenizer.json"))
    return path


def test_local_tokenizer_sizing(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    counter = LocalTokenizer(_tokenizer_dir(tmp_path))

    async def run() -> list[int]:
        prompts = await PromptFactory(counter, verify_all=True).prompts(77, 30)
        assert len({p.text for p in prompts}) == 30
        return [await counter.count(p.text) for p in prompts]

    assert asyncio.run(run()) == [77] * 30


def test_matrix_runs_small_cells_first() -> None:
    assert matrix([8, 1, 8], [512, 31]) == [(1, 31), (8, 31), (1, 512), (8, 512)]
