"""The generation engine: batching correctness, streaming, stop conditions, limits, lifecycle and hot swap."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bot.engine import (
    Engine,
    EngineClosedError,
    GenerationResult,
    QueueFullError,
    SamplingParams,
    encode_prompt,
)
from bot.model_loader import LoadedModel, load_run_model, prepare_model
from tests.tiny import make_tiny_tokenizer, publish_tiny_run
from trainer.runs import Manifest
from trainer.scene_format import SCENE_FORMAT_VERSION, build_prompt

GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root = tmp_path_factory.mktemp("checkpoints")
    return load_run_model(publish_tiny_run(root, run_id="run-a"))


@pytest.fixture(scope="module")
def tiny_b(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root = tmp_path_factory.mktemp("checkpoints-b")
    return load_run_model(publish_tiny_run(root, run_id="run-b", seed=1))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


def _manifest(run_id: str) -> Manifest:
    return Manifest(
        run_id=run_id, base_model="test", corpus_sha256="0" * 64, tokenizer_hash="test",
        scene_format_version=SCENE_FORMAT_VERSION, steps=0, tokens_seen=0,
        val_loss_before=None, val_ppl_before=None, val_loss_after=None, val_ppl_after=None,
    )


def _bare_model(tokenizer, n_positions: int) -> GPT2LMHeadModel:
    """A GPT-2 whose blocks add nothing to the residual stream, so the last token alone decides the next."""
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=64, n_layer=2, n_head=2,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for block in model.transformer.h:
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
        model.transformer.wpe.weight.zero_()
        model.transformer.wte.weight.normal_(0.0, 1.0)
        model.lm_head.weight.zero_()
    return model


def scripted_model(tokenizer, script: list[int], n_positions: int = 128) -> LoadedModel:
    """A model that, greedily, follows ``script``: token script[i] is always followed by script[i + 1]."""
    model = _bare_model(tokenizer, n_positions)
    with torch.no_grad():
        embeddings = model.transformer.wte.weight
        norm = model.transformer.ln_f
        for current, following in itertools.pairwise(script):
            model.lm_head.weight[following] += norm(embeddings[current])
    return prepare_model("scripted", _manifest("scripted"), model, tokenizer)


def constant_model(tokenizer, token: int, n_positions: int = 1024, run_id: str = "constant") -> LoadedModel:
    """A model that always predicts ``token``, whatever came before: it never stops by itself."""
    model = _bare_model(tokenizer, n_positions)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.normal_(0.0, 1.0)
        model.lm_head.weight[token] = model.transformer.ln_f.bias * 10
    return prepare_model(run_id, _manifest(run_id), model, tokenizer)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


async def _collect(handle) -> tuple[str, GenerationResult]:
    streamed = "".join([delta async for delta in handle.stream()])
    return streamed, await handle.result()


PROMPTS = [
    build_prompt(("Jon Snow", "Arya Stark"), "Winterfell."),
    build_prompt(("Tyrion Lannister",), None, "I drink and I know things."),
    build_prompt(("Cersei Lannister", "Sansa Stark", "Jon Snow"), "The throne room, at night, cold."),
    build_prompt(("Arya Stark",)),
]
SETTINGS = [
    GREEDY,
    SamplingParams(max_new_tokens=24, seed=7),
    SamplingParams(max_new_tokens=30, temperature=1.3, top_k=0, top_p=0.8, seed=11),
    SamplingParams(max_new_tokens=20, temperature=0.0, repetition_penalty=1.3),
]


async def _run_alone(model: LoadedModel) -> list[tuple[str, GenerationResult]]:
    engine = Engine(model, max_batch_size=1)
    await engine.start()
    try:
        return [await _collect(engine.submit(p, s)) for p, s in zip(PROMPTS, SETTINGS, strict=True)]
    finally:
        await engine.stop()


async def test_batched_results_equal_unbatched(tiny: LoadedModel) -> None:
    """Greedy and seeded requests give the same text alone and inside a batch, even when joining mid-way."""
    alone = await _run_alone(tiny)
    engine = Engine(tiny, max_batch_size=8)
    await engine.start()
    try:
        handles = [engine.submit(p, s) for p, s in zip(PROMPTS[:2], SETTINGS[:2], strict=True)]
        await asyncio.sleep(0.01)  # the first two are generating when the others join
        handles += [engine.submit(p, s) for p, s in zip(PROMPTS[2:], SETTINGS[2:], strict=True)]
        batched = [await _collect(h) for h in handles]
        assert engine.stats().peak_batch_size >= 2
    finally:
        await engine.stop()
    for (text_a, result_a), (text_b, result_b) in zip(alone, batched, strict=True):
        assert result_a.text == result_b.text
        assert (result_a.new_tokens, result_a.finish_reason) == (result_b.new_tokens, result_b.finish_reason)
        assert text_a == result_a.text and text_b == result_b.text
    assert any(result.new_tokens > 5 for _, result in alone)


async def test_same_seed_same_text_and_random_seed_reported(tiny: LoadedModel) -> None:
    """A seed replays a request; without one, the result names the seed that was drawn."""
    engine = Engine(tiny)
    await engine.start()
    try:
        params = SamplingParams(max_new_tokens=30, seed=None)
        first = await engine.submit(PROMPTS[0], params).result()
        again = await engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=30, seed=first.seed)).result()
    finally:
        await engine.stop()
    assert again.text == first.text and again.new_tokens == first.new_tokens


async def test_stream_adds_up_to_result(tiny: LoadedModel) -> None:
    """Streamed deltas concatenate to exactly the final text, whatever the finish reason."""
    engine = Engine(tiny, max_batch_size=4)
    await engine.start()
    try:
        handles = [engine.submit(PROMPTS[i % 4], SamplingParams(max_new_tokens=40, seed=i)) for i in range(6)]
        for streamed, result in [await _collect(h) for h in handles]:
            assert streamed == result.text
            assert result.finish_reason in ("eos", "scene_end", "length")
    finally:
        await engine.stop()


async def test_stream_yields_each_line_as_it_ends(tokenizer) -> None:
    """Deltas are whole lines, in order; the cut-off last line is neither streamed nor in the result."""
    script = _ids(tokenizer, ":") + _ids(tokenizer, " Winter.\nJon Snow:")
    engine = Engine(scripted_model(tokenizer, script))
    await engine.start()
    try:
        handle = engine.submit(build_prompt(("Jon Snow",)), _greedy(20))
        deltas = [delta async for delta in handle.stream()]
        result = await handle.result()
    finally:
        await engine.stop()
    assert deltas == [" Winter.\n", "Jon Snow: Winter.\n", "Jon Snow: Winter.\n"]
    assert (result.finish_reason, result.text) == ("length", "".join(deltas))


async def test_stops_at_next_scene_header(tokenizer) -> None:
    """Generation ends where a new scene header starts; the header is not part of the text."""
    script = _ids(tokenizer, ":") + _ids(tokenizer, " Winter.\n### Scene")
    engine = Engine(scripted_model(tokenizer, script))
    await engine.start()
    try:
        streamed, result = await _collect(engine.submit(build_prompt(("Jon Snow",)), GREEDY))
    finally:
        await engine.stop()
    assert result.finish_reason == "scene_end"
    assert result.text == " Winter.\n" == streamed


async def test_stops_at_end_of_text(tokenizer) -> None:
    """The end-of-text token ends the scene and is not part of the text."""
    script = [*_ids(tokenizer, ":"), *_ids(tokenizer, " Winter.\n"), tokenizer.eos_token_id]
    engine = Engine(scripted_model(tokenizer, script))
    await engine.start()
    try:
        result = await engine.submit(build_prompt(("Jon Snow",)), GREEDY).result()
    finally:
        await engine.stop()
    assert (result.finish_reason, result.text, result.new_tokens) == ("eos", " Winter.\n", 3)


async def test_length_stop_drops_unfinished_line(tokenizer) -> None:
    """Stopping at the token cap drops the line that was cut off."""
    script = _ids(tokenizer, ":") + _ids(tokenizer, " Winter.\n### Scene")
    engine = Engine(scripted_model(tokenizer, script))
    await engine.start()
    try:
        cut = await engine.submit(build_prompt(("Jon Snow",)), _greedy(2)).result()
        whole = await engine.submit(build_prompt(("Jon Snow",)), _greedy(3)).result()
    finally:
        await engine.stop()
    assert (cut.finish_reason, cut.text, cut.new_tokens) == ("length", "", 2)
    assert (whole.finish_reason, whole.text) == ("length", " Winter.\n")


def _greedy(tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=tokens, temperature=0.0, repetition_penalty=1.0)


async def test_token_cap_applies(tokenizer) -> None:
    """A request asking for more than the engine's cap gets the cap."""
    newline = _ids(tokenizer, "\n")[0]
    engine = Engine(constant_model(tokenizer, newline), max_new_tokens_cap=10)
    await engine.start()
    try:
        result = await engine.submit("Jon Snow:", _greedy(300)).result()
    finally:
        await engine.stop()
    assert (result.finish_reason, result.new_tokens, result.text) == ("length", 10, "\n" * 10)


async def test_context_limit_respected(tokenizer) -> None:
    """Prompt plus new tokens never exceed the model's context."""
    newline = _ids(tokenizer, "\n")[0]
    engine = Engine(constant_model(tokenizer, newline, n_positions=48))
    await engine.start()
    prompt = build_prompt(("Jon Snow",))
    try:
        result = await engine.submit(prompt, _greedy(200)).result()
    finally:
        await engine.stop()
    assert result.finish_reason == "context"
    assert result.new_tokens == 48 - len(_ids(tokenizer, prompt))


def test_long_prompt_keeps_header_and_last_line(tokenizer) -> None:
    """An over-long prompt loses its earliest lines after the header, never the header or the last line."""
    header = build_prompt(("Jon Snow", "Arya Stark"), "Winterfell.")
    body = "".join(f"Jon Snow: Line number {i} of the scene.\n" for i in range(30)) + "Arya Stark:"
    ids = encode_prompt(tokenizer, header + body, budget=80)
    text = tokenizer.decode(ids)
    assert len(ids) <= 80
    assert text.startswith(header) and text.endswith("of the scene.\nArya Stark:")
    assert "Line number 0 " not in text and "Line number 29 " in text
    with pytest.raises(ValueError, match="too long"):
        encode_prompt(tokenizer, header + body, budget=10)


async def test_prompt_too_long_for_context_is_refused(tokenizer) -> None:
    """A prompt whose header alone cannot fit fails with a clear ValueError; an empty one fails at once."""
    engine = Engine(constant_model(tokenizer, 5, n_positions=32))
    await engine.start()
    try:
        handle = engine.submit(build_prompt(("Jon Snow",), "A very long setting " * 20), _greedy(10))
        with pytest.raises(ValueError, match="too long"):
            await handle.result()
        with pytest.raises(ValueError):
            engine.submit("   ", _greedy(10))
        with pytest.raises(ValueError):
            engine.submit("Jon:", SamplingParams(top_p=0.0))
    finally:
        await engine.stop()


async def test_queue_full_raises_with_estimate(tokenizer) -> None:
    """A full queue refuses with a retry estimate; every accepted request still finishes."""
    engine = Engine(constant_model(tokenizer, 5), max_batch_size=1, max_queue=2)
    await engine.start()
    handles = []
    try:
        with pytest.raises(QueueFullError) as caught:
            for _ in range(5):
                handles.append(engine.submit("Jon Snow:", _greedy(400)))
        assert caught.value.retry_after_s > 0
        assert 2 <= len(handles) <= 3
        assert [h.position() for h in handles][-2:] == [1, 2]
    finally:
        await engine.stop(drain_timeout_s=0)
    results = [await h.result() for h in handles]
    assert all(r.finish_reason in ("cancelled", "length") for r in results)


async def test_timeout(tokenizer) -> None:
    """A request running past the engine's timeout finishes with finish_reason 'timeout'."""
    engine = Engine(constant_model(tokenizer, 5), request_timeout_s=0.05)
    await engine.start()
    try:
        result = await engine.submit("Jon Snow:", _greedy(400)).result()
    finally:
        await engine.stop()
    assert result.finish_reason == "timeout" and result.new_tokens < 400


async def test_cancel_running_and_queued(tokenizer) -> None:
    """Cancelling ends a running request after its current step and a queued one at once."""
    engine = Engine(constant_model(tokenizer, 5), max_batch_size=1)
    await engine.start()
    try:
        running = engine.submit("Jon Snow:", _greedy(400))
        queued = engine.submit("Arya Stark:", _greedy(400))
        while running.first_token_s is None:
            await asyncio.sleep(0.005)
        assert queued.position() == 1 and running.position() == 0
        queued.cancel()
        running.cancel()
        first, second = await running.result(), await queued.result()
    finally:
        await engine.stop()
    assert first.finish_reason == "cancelled" and first.new_tokens < 400
    assert (second.finish_reason, second.new_tokens, second.text) == ("cancelled", 0, "")


async def test_stop_drains_then_refuses(tiny: LoadedModel) -> None:
    """stop() lets queued and running requests finish, then new submissions are refused."""
    engine = Engine(tiny, max_batch_size=2)
    await engine.start()
    handles = [engine.submit(PROMPTS[i], SamplingParams(max_new_tokens=15, seed=i)) for i in range(4)]
    await engine.stop(drain_timeout_s=30)
    results = [await h.result() for h in handles]
    assert all(r.finish_reason in ("eos", "scene_end", "length") for r in results)
    with pytest.raises(EngineClosedError):
        engine.submit(PROMPTS[0], GREEDY)
    assert engine.stats().completed == 4


async def test_stop_without_drain_cancels_clearly(tokenizer) -> None:
    """With no time to drain, running and queued requests end as 'cancelled'."""
    engine = Engine(constant_model(tokenizer, 5), max_batch_size=1)
    await engine.start()
    handles = [engine.submit("Jon Snow:", _greedy(400)) for _ in range(3)]
    await engine.stop(drain_timeout_s=0)
    assert [(await h.result()).finish_reason for h in handles] == ["cancelled"] * 3


async def test_swap_while_requests_run(tokenizer) -> None:
    """Running requests finish on the old model; requests after the swap are served by the new one."""
    old = constant_model(tokenizer, _ids(tokenizer, "\n")[0], run_id="old")
    new = constant_model(tokenizer, _ids(tokenizer, "\n")[0], run_id="new")
    engine = Engine(old, max_batch_size=4)
    await engine.start()
    try:
        before = [engine.submit("Jon Snow:", _greedy(60)) for _ in range(3)]
        while before[0].first_token_s is None:
            await asyncio.sleep(0.005)
        swap = asyncio.create_task(engine.swap(new))
        await asyncio.sleep(0)
        after = [engine.submit("Arya Stark:", _greedy(10)) for _ in range(2)]
        await swap
        assert engine.run_id == "new"
        old_results = [await h.result() for h in before]
        new_results = [await h.result() for h in after]
    finally:
        await engine.stop()
    assert [r.run_id for r in old_results] == ["old"] * 3
    assert all(r.finish_reason == "length" and r.new_tokens == 60 for r in old_results)
    assert [r.run_id for r in new_results] == ["new"] * 2


async def test_event_loop_not_blocked(tiny: LoadedModel) -> None:
    """The loop keeps ticking while the worker generates a batch."""
    engine = Engine(tiny, max_batch_size=4)
    await engine.start()
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - before - 0.01)

    tick = asyncio.create_task(ticker())
    try:
        handles = [engine.submit(PROMPTS[i % 4], SamplingParams(max_new_tokens=60, seed=i)) for i in range(8)]
        await asyncio.gather(*(h.result() for h in handles))
    finally:
        tick.cancel()
        await engine.stop()
    assert len(lags) >= 3
    assert max(lags) < 0.25


async def test_stats_and_estimate(tiny: LoadedModel) -> None:
    """Stats count finished requests and report latency percentiles and throughput."""
    engine = Engine(tiny)
    await engine.start()
    try:
        await asyncio.gather(*(engine.submit(p, GREEDY).result() for p in PROMPTS))
        stats = engine.stats()
    finally:
        await engine.stop()
    assert stats.completed == 4 and stats.queue_depth == 0 and stats.active == 0
    assert stats.p50_latency_s is not None and stats.p95_latency_s >= stats.p50_latency_s
    assert stats.tokens_per_s > 0 and stats.run_id == "run-a"
    assert engine.estimated_wait_s() == 0.0


async def test_submit_before_start_is_refused(tiny: LoadedModel) -> None:
    """An engine that is not running refuses requests with EngineClosedError."""
    with pytest.raises(EngineClosedError):
        Engine(tiny).submit(PROMPTS[0], GREEDY)
