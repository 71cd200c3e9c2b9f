"""Serving benchmark: the engine against the naive baseline (one ``model.generate`` per request, in turn).

For concurrency 1, 4 and 16 it submits that many /scene-style prompts at once and reports per-stream
tokens/s, time to the first generated token and to the first streamed text (the engine streams whole
lines), p50/p95 latency and aggregate tokens/s; then the ratios against the baseline measured in the same
run on the same model and sampling settings. Both sides sample (temperature, top-p, top-k, repetition
penalty) and use the same threads.

Examples::

    python benchmarks/serve.py --random-gpt2                      # GPT-2 124M shape, random weights
    python benchmarks/serve.py --random-gpt2 --quantize int8
    python benchmarks/serve.py --model-dir checkpoints --device cuda
    python benchmarks/serve.py --model-dir checkpoints --quantize int8 --ppl-text valid.txt

``--ppl-text`` also measures the perplexity of the model, as loaded (fp32 / int8), on that text
against the unquantized model, to check that a faster path keeps quality.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.engine import Engine, SamplingParams  # noqa: E402
from bot.model_loader import LoadedModel, load_model_weights, load_run_model, prepare_model  # noqa: E402
from trainer import runs  # noqa: E402
from trainer.scene_format import SCENE_FORMAT_VERSION, build_prompt  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus" / "GoT_textonly.txt"
CAST = ["Jon Snow", "Arya Stark", "Tyrion Lannister", "Cersei Lannister", "Sansa Stark", "Daenerys Targaryen",
        "Jaime Lannister", "Samwell Tarly"]
PLACES = ["Winterfell.", "The Red Keep, at night.", "Castle Black.", "A road in the Riverlands.", None]


@dataclass
class Timing:
    tokens: int
    latency_s: float
    first_token_s: float | None
    first_text_s: float | None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loaded = build_model(args)
    config = loaded.model.config
    print(f"model: {loaded.run_id} ({config.n_layer} layers, {config.n_embd} wide, "
          f"vocab {config.vocab_size}), device {loaded.device}, dtype {loaded.dtype}, "
          f"quantize {loaded.quantize}, threads {args.threads}, new tokens {args.new_tokens}, "
          f"rounds {args.rounds}")
    prompts = [make_prompt(i) for i in range(max(args.concurrency))]
    params = [SamplingParams(max_new_tokens=args.new_tokens, seed=i) for i in range(len(prompts))]
    baseline_model = loaded
    if args.baseline_fp32 and loaded.quantize != "none":
        baseline_model = build_model(args, quantize="none")
    run_baseline(baseline_model, prompts[:1], params[:1])  # warm-up, not counted

    # Rounds interleave the baseline and every concurrency, so a burst of load on a shared machine hits
    # both sides alike; the figures are medians over rounds and the ratios are paired per round.
    rows: dict[str, list[tuple[list[Timing], float]]] = {"baseline": []}
    rows.update({f"c{c}": [] for c in args.concurrency})
    for round_index in range(args.rounds):
        picks = [(round_index + k) % len(prompts) for k in range(args.baseline_requests)]
        base = run_baseline(baseline_model, [prompts[i] for i in picks], [params[i] for i in picks])
        rows["baseline"].append((base, sum(t.latency_s for t in base)))
        for concurrency in args.concurrency:
            timings, wall = asyncio.run(run_engine(loaded, prompts[:concurrency], params[:concurrency], args))
            rows[f"c{concurrency}"].append((timings, wall))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    report("baseline: HF generate, one request at a time" + (" (float32)" if baseline_model is not loaded
                                                             else ""), rows["baseline"])
    for concurrency in args.concurrency:
        report(f"engine: {concurrency} concurrent", rows[f"c{concurrency}"])
        stream_ratio = statistics.median(
            _stream(timings) / _stream(base) for (timings, _), (base, _) in
            zip(rows[f"c{concurrency}"], rows["baseline"], strict=True)
        )
        aggregate_ratio = statistics.median(
            _aggregate(timings, wall) / _aggregate(base, base_wall) for (timings, wall), (base, base_wall) in
            zip(rows[f"c{concurrency}"], rows["baseline"], strict=True)
        )
        print(f"  vs baseline (median of per-round ratios): per-stream {stream_ratio:.2f}x, "
              f"aggregate {aggregate_ratio:.2f}x")

    if args.ppl_text:
        check_perplexity(args, loaded)
    return 0


def _stream(timings: list[Timing]) -> float:
    """Mean tokens/s one client sees (its tokens over its latency, queueing included)."""
    return statistics.fmean(t.tokens / t.latency_s for t in timings)


def _aggregate(timings: list[Timing], wall: float) -> float:
    return sum(t.tokens for t in timings) / wall


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path,
                        help="a checkpoint root (serves its CURRENT run) or a save_pretrained directory")
    source.add_argument("--random-gpt2", action="store_true",
                        help="GPT-2 124M configuration with random weights (no download)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto [default: cpu]")
    parser.add_argument("--quantize", choices=("none", "int8"), default="none",
                        help="serve int8 weights (CPU) [default: none]")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per request [default: 64]")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16],
                        help="simultaneous requests to measure [default: 1 4 16]")
    parser.add_argument("--max-batch-size", type=int, default=16, help="engine batch size [default: 16]")
    parser.add_argument("--baseline-requests", type=int, default=1,
                        help="requests the sequential baseline serves per round [default: 1]")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of baseline + every concurrency, interleaved [default: 3]")
    parser.add_argument("--baseline-fp32", action=argparse.BooleanOptionalAction, default=True,
                        help="with --quantize int8, run the baseline on the float32 model [default: yes]")
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()),
                        help="torch threads, for both sides [default: torch's]")
    parser.add_argument("--ppl-text", type=Path, default=None,
                        help="text file: also compare perplexity of the served model against float32")
    parser.add_argument("--ppl-tokens", type=int, default=8192, help="tokens of --ppl-text to score")
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace, quantize: str | None = None) -> LoadedModel:
    """The model under test, loaded the way the bot loads it."""
    quantize = args.quantize if quantize is None else quantize
    if args.random_gpt2:
        return random_gpt2(args.device, quantize)
    root = Path(args.model_dir)
    if (root / runs.CURRENT_NAME).is_file():
        run = runs.current_run(root)
        assert run is not None
        return load_run_model(run, device=args.device, quantize=quantize)
    from transformers import AutoTokenizer

    model = load_model_weights(root, root.name)
    tokenizer = AutoTokenizer.from_pretrained(root)
    return prepare_model(root.name, _manifest(root.name), model, tokenizer, device=args.device,
                         quantize=quantize)


def random_gpt2(device: str, quantize: str) -> LoadedModel:
    """GPT-2 124M (12 layers, 768 wide, 50257 tokens) with seeded random weights; a corpus-trained BPE."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from trainer.model import train_bpe_tokenizer

    text = CORPUS.read_text(encoding="utf-8") if CORPUS.is_file() else " ".join(CAST) * 2000
    tokenizer = train_bpe_tokenizer([text[i : i + 10_000] for i in range(0, len(text), 10_000)],
                                    vocab_size=50257)
    torch.manual_seed(0)
    config = GPT2Config(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)  # vocab 50257 like GPT-2: the output layer costs what it costs there
    return prepare_model("random-gpt2", _manifest("random-gpt2"), model, tokenizer, device=device,
                         quantize=quantize)


def _manifest(run_id: str) -> runs.Manifest:
    return runs.Manifest(
        run_id=run_id, base_model=run_id, corpus_sha256="", tokenizer_hash="",
        scene_format_version=SCENE_FORMAT_VERSION, steps=0, tokens_seen=0, val_loss_before=None,
        val_ppl_before=None, val_loss_after=None, val_ppl_after=None,
    )


def make_prompt(index: int) -> str:
    """A /scene-style prompt; they differ in length so the engine has padding to handle."""
    count = 1 + index % 3
    characters = [CAST[(index + k) % len(CAST)] for k in range(count)]
    opening = "We should head back to the Wall." if index % 2 else None
    return build_prompt(characters, PLACES[index % len(PLACES)], opening)


def run_baseline(loaded: LoadedModel, prompts: list[str], params: list[SamplingParams]) -> list[Timing]:
    """One ``model.generate`` call per request, sequentially, with the same sampling settings."""
    model, tokenizer = loaded.model, loaded.tokenizer
    timings = []
    for prompt, setting in zip(prompts, params, strict=True):
        inputs = tokenizer(prompt, return_tensors="pt").to(loaded.device)
        # Like the engine, never run past the model's context.
        new_tokens = min(setting.max_new_tokens, loaded.context_length - inputs["input_ids"].shape[1])
        torch.manual_seed(setting.seed or 0)
        start = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                **inputs, do_sample=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                temperature=setting.temperature, top_p=setting.top_p, top_k=setting.top_k,
                repetition_penalty=setting.repetition_penalty,
                pad_token_id=tokenizer.eos_token_id,
            )
        seconds = time.perf_counter() - start
        tokens = output.shape[1] - inputs["input_ids"].shape[1]
        timings.append(Timing(tokens, seconds, None, seconds))  # nothing is shown before it returns
    return timings


async def run_engine(
    loaded: LoadedModel, prompts: list[str], params: list[SamplingParams], args: argparse.Namespace
) -> tuple[list[Timing], float]:
    """Submit every prompt at once to a fresh engine; per-request timings and the wall time."""
    engine = Engine(loaded, max_batch_size=args.max_batch_size, max_queue=len(prompts) + 1,
                    max_new_tokens_cap=args.new_tokens, threads=args.threads)
    await engine.start()
    try:
        await engine.submit(prompts[0], SamplingParams(max_new_tokens=4, seed=0)).result()  # warm-up

        async def one(prompt: str, setting: SamplingParams) -> Timing:
            start = time.perf_counter()
            handle = engine.submit(prompt, setting)
            first_text = None
            async for _ in handle.stream():
                if first_text is None:
                    first_text = time.perf_counter() - start
            result = await handle.result()
            return Timing(result.new_tokens, time.perf_counter() - start, handle.first_token_s, first_text)

        start = time.perf_counter()
        timings = await asyncio.gather(*(one(p, s) for p, s in zip(prompts, params, strict=True)))
        wall = time.perf_counter() - start
    finally:
        await engine.stop()
    return list(timings), wall


def report(title: str, rounds: list[tuple[list[Timing], float]]) -> None:
    """Print one block of figures: medians over rounds, latency percentiles over every request."""
    everything = [t for timings, _ in rounds for t in timings]
    latencies = sorted(t.latency_s for t in everything)
    first_tokens = [t.first_token_s for t in everything if t.first_token_s is not None]
    first_texts = [t.first_text_s for t in everything if t.first_text_s is not None]
    stream = statistics.median(_stream(timings) for timings, _ in rounds)
    aggregate = statistics.median(_aggregate(timings, wall) for timings, wall in rounds)
    print(f"{title}: {len(everything)} requests, {sum(t.tokens for t in everything)} tokens")
    print(f"  per-stream tokens/s {stream:7.1f}   aggregate tokens/s {aggregate:7.1f}")
    print(f"  latency p50 {_pct(latencies, 0.5):6.2f} s  p95 {_pct(latencies, 0.95):6.2f} s   "
          f"first token p50 {_fmt(first_tokens)}   first streamed text p50 {_fmt(first_texts)}"
          f" ({len(first_texts)}/{len(everything)} streamed any text)")


def check_perplexity(args: argparse.Namespace, served: LoadedModel) -> None:
    """Perplexity of the served model and of the float32 model on the same tokens."""
    reference = build_model(args, quantize="none") if served.quantize != "none" else served
    text = args.ppl_text.read_text(encoding="utf-8")
    encoded = served.tokenizer(text[: args.ppl_tokens * 8], return_tensors="pt")["input_ids"]
    ids = encoded[0, : args.ppl_tokens]
    ppl_ref = perplexity(reference, ids)
    ppl_served = perplexity(served, ids)
    print(f"perplexity on {len(ids)} tokens of {args.ppl_text.name}: float32 {ppl_ref:.3f}, "
          f"served ({served.quantize}) {ppl_served:.3f}, change {100 * (ppl_served / ppl_ref - 1):+.2f}%")


def perplexity(loaded: LoadedModel, ids: torch.Tensor, block: int = 256) -> float:
    """exp(mean next-token loss) over non-overlapping blocks."""
    block = min(block, loaded.context_length)
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, block):
            chunk = ids[start : start + block + 1].unsqueeze(0).to(loaded.device)
            if chunk.shape[1] < 2:
                break
            logits = loaded.model(input_ids=chunk[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
            total += loss.item()
            count += chunk.shape[1] - 1
    return math.exp(total / count)


def _pct(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s" if values else "   n/a"


if __name__ == "__main__":
    sys.exit(main())
