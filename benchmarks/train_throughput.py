"""Training throughput: maester's own training loop against the Hugging Face ``Trainer``, same model and data.

Each side runs in a fresh subprocess (so peak memory is its own), on the same randomly initialised model
saved once to a temporary directory, on the same packed blocks of the corpus. The first steps (compile,
allocator warm-up) are not timed. Prints tokens/s, ms/step and peak memory (GPU: max allocated; CPU:
peak resident set) for both, and their ratios.

    python benchmarks/train_throughput.py --preset cpu-small     # a small GPT-2 on the CPU, fp32
    python benchmarks/train_throughput.py --preset gpu-124m      # GPT-2 124M, block 1024, bf16 (needs CUDA)

The Hugging Face side needs ``accelerate`` (``pip install accelerate``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRESETS = {
    # A small GPT-2 that a laptop CPU steps through in well under a second.
    "cpu-small": dict(n_layer=4, n_embd=256, n_head=4, vocab=8192, block=128, batch=8, steps=30, warmup=10,
                      device="cpu"),
    # GPT-2 small (124M) exactly: 12 layers, 768 wide, 50257 tokens, 1024 context; the product default.
    "gpu-124m": dict(n_layer=12, n_embd=768, n_head=12, vocab=50257, block=1024, batch=8, steps=60, warmup=20,
                     device="cuda"),
}
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "Game_of_Thrones_Script_MD.csv"


def main() -> int:
    """Prepare the shared model and blocks, run both sides, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help="corpus file (default: the shared script corpus; made-up scenes if absent)")
    parser.add_argument("--steps", type=int, help="optimizer steps per side (default: the preset's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per side, alternating maester/HF; each side's fastest run is reported "
                             "(a busy machine slows single runs unevenly)")
    parser.add_argument("--side", choices=("maester", "hf"), help=argparse.SUPPRESS)  # internal: one side
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    preset = dict(PRESETS[args.preset])
    if args.steps:
        preset["steps"] = args.steps
        preset["warmup"] = min(preset["warmup"], args.steps // 3)
    if args.side:
        result = run_side(args.side, preset, args.workdir, args.threads)
        print("RESULT " + json.dumps(result))
        return 0

    import torch

    if preset["device"] == "cuda" and not torch.cuda.is_available():
        print(f"preset {args.preset} needs a CUDA GPU; use --preset cpu-small here.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="maester-bench-") as tmp:
        workdir = Path(tmp)
        source = prepare_shared(preset, args.corpus, workdir)
        results: dict[str, dict] = {}
        for side in ("maester", "hf") * max(1, args.repeats):
            cmd = [sys.executable, __file__, "--preset", args.preset, "--side", side,
                   "--workdir", str(workdir), "--threads", str(args.threads)]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                print(f"the {side} side failed:\n{out.stderr[-4000:]}", file=sys.stderr)
                return 1
            result = json.loads(lines[-1][len("RESULT "):])
            print(f"  {side}: {result['ms_per_step']:.1f} ms/step", file=sys.stderr)
            if side not in results or result["ms_per_step"] < results[side]["ms_per_step"]:
                results[side] = result
    report(args, preset, source, results)
    return 0


def prepare_shared(preset: dict, corpus_path: Path, workdir: Path) -> str:
    """Save the random model + tokenizer and the corpus documents both sides train on."""
    from trainer.model import build_scratch_model, train_bpe_tokenizer

    if corpus_path.is_file():
        from trainer.prepare import prepare_corpus

        corpus = prepare_corpus([corpus_path], 0.1)
        train_docs, val_docs, sha, source = corpus.train_docs, corpus.val_docs, corpus.corpus_sha256, str(
            corpus_path.name
        )
    else:
        train_docs, val_docs, sha = _made_up_scenes(2000), _made_up_scenes(200, offset=7), "0" * 64
        source = "made-up scenes (corpus file not found)"
    tokenizer = train_bpe_tokenizer(train_docs, vocab_size=preset["vocab"])
    model = build_scratch_model(tokenizer, n_layer=preset["n_layer"], n_embd=preset["n_embd"],
                                n_head=preset["n_head"], n_positions=preset["block"], seed=0)
    if model.config.vocab_size < preset["vocab"]:  # GPT-2's full embedding size, whatever BPE reached
        model.resize_token_embeddings(preset["vocab"])
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    (workdir / "docs.json").write_text(json.dumps({"train": train_docs, "val": val_docs, "sha": sha}))
    return source


def run_side(side: str, preset: dict, workdir: Path, threads: int) -> dict:
    """Train one side for ``steps`` steps; return the timed figures."""
    import torch

    torch.set_num_threads(threads)
    docs = json.loads((workdir / "docs.json").read_text())
    from trainer.data import load_or_build_blocks
    from trainer.model import load_pretrained, tokenizer_hash

    loaded = load_pretrained(str(workdir / "model"))
    blocks = load_or_build_blocks(
        docs["train"], docs["val"], loaded.tokenizer, corpus_sha256=docs["sha"],
        tokenizer_sha256=tokenizer_hash(loaded.tokenizer), block_size=preset["block"],
        cache_dir=workdir / "cache",
    )
    times = _run_maester(preset, workdir, docs) if side == "maester" else _run_hf(preset, loaded, blocks)
    warm, steps = preset["warmup"], preset["steps"]
    seconds = times[steps] - times[warm]
    tokens = (steps - warm) * preset["batch"] * preset["block"]
    if preset["device"] == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        peak_kind = "GPU max allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        peak_kind = "peak RSS"
    return {"tokens_per_s": tokens / seconds, "ms_per_step": 1000 * seconds / (steps - warm),
            "peak_mib": peak, "peak_kind": peak_kind, "timed_steps": steps - warm}


def _run_maester(preset: dict, workdir: Path, docs: dict) -> dict[int, float]:
    """maester's own loop (trainer.train.train), timed from its metrics: step -> elapsed seconds."""
    from dataclasses import dataclass, field

    from trainer.config import TrainConfig
    from trainer.metrics import read_metrics
    from trainer.train import train

    @dataclass
    class Corpus:
        train_docs: list
        val_docs: list
        corpus_sha256: str
        speakers: list = field(default_factory=list)

    config = TrainConfig(
        model=str(workdir / "model"), init="pretrained", block_size=preset["block"],
        batch_size=preset["batch"],
        grad_accum=1, steps=preset["steps"], lr=1e-4, warmup_steps=max(1, preset["steps"] // 10),
        eval_every=10**9, eval_batches=1, sample_every=0, checkpoint_every=10**9, log_every=1,
        checkpoint_dir=workdir / "maester", cache_dir=workdir / "cache", run_id="bench", publish=False,
        progress=False, device=preset["device"],
    )
    config.validate(need_corpus=False)
    train(config, Corpus(docs["train"], docs["val"], docs["sha"]))
    events = read_metrics(workdir / "maester" / "work" / "bench" / "metrics.jsonl")
    return {e["step"]: e["elapsed_s"] for e in events if e["event"] == "step"}


def _run_hf(preset: dict, loaded, blocks) -> dict[int, float]:
    """The Hugging Face Trainer on the same model and blocks: step -> seconds since it started."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainer.data import batch_tensors

    inputs, labels = batch_tensors(blocks.train, loaded.tokenizer.eos_token_id)

    class Blocks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(inputs)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": inputs[i], "labels": labels[i]}

    times: dict[int, float] = {}
    cuda = preset["device"] == "cuda"

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            times[state.global_step] = time.perf_counter()

    out = Path(tempfile.mkdtemp(prefix="hf-trainer-"))
    arguments = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=preset["batch"], gradient_accumulation_steps=1,
        max_steps=preset["steps"], learning_rate=1e-4, warmup_steps=max(1, preset["steps"] // 10),
        lr_scheduler_type="cosine", bf16=cuda, use_cpu=not cuda, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to=[], disable_tqdm=True, dataloader_pin_memory=cuda, max_grad_norm=1.0,
        weight_decay=0.01,
    )
    loaded.model.config.use_cache = False
    Trainer(model=loaded.model, args=arguments, train_dataset=Blocks(), callbacks=[Clock()]).train()
    return times


def report(args: argparse.Namespace, preset: dict, source: str, results: dict) -> None:
    """Print both sides and the ratios."""
    name, threads = args.preset, args.threads
    ours, hf = results["maester"], results["hf"]
    precision = "bf16" if preset["device"] == "cuda" else "fp32"
    print(f"preset {name}: GPT-2 {preset['n_layer']} layers x {preset['n_embd']}, vocab {preset['vocab']}, "
          f"block {preset['block']}, batch {preset['batch']}, {precision} on {preset['device']} "
          f"({threads} threads), {ours['timed_steps']} timed steps after {preset['warmup']} warm-up; "
          f"data: {source}; best of {args.repeats} alternating runs per side")
    print(f"{'':18}{'tokens/s':>12}{'ms/step':>12}{'peak MiB':>12}  ({ours['peak_kind']})")
    for label, r in (("maester train", ours), ("HF Trainer", hf)):
        print(f"{label:18}{r['tokens_per_s']:>12,.0f}{r['ms_per_step']:>12.1f}{r['peak_mib']:>12,.0f}")
    print(f"ratio maester/HF: tokens/s x{ours['tokens_per_s'] / hf['tokens_per_s']:.2f}, "
          f"ms/step x{ours['ms_per_step'] / hf['ms_per_step']:.2f}, "
          f"peak memory x{ours['peak_mib'] / hf['peak_mib']:.2f}")


def _made_up_scenes(count: int, offset: int = 0) -> list[str]:
    names = ("Jon Snow", "Arya Stark", "Tyrion Lannister", "Cersei Lannister")
    lines = ("Winter is coming.", "The north remembers.", "I drink and I know things.", "Nothing is easy.")
    return [
        "### Scene\n\n"
        + "".join(f"{names[(i + t) % 4]}: {lines[(i * 3 + t + offset) % 4]}\n" for t in range(8))
        for i in range(count)
    ]


if __name__ == "__main__":
    sys.exit(main())
