"""``python -m trainer train``: fine-tune (or train from scratch), evaluate, checkpoint, resume, publish.

The loop in :func:`train` reads top to bottom: load model and blocks, then for each optimizer step
accumulate micro-batches under bf16 autocast, clip, step AdamW and the warmup+cosine schedule; evaluate,
sample, stop early and checkpoint on their cadences; at the end publish the best weights by validation
loss as a run (:func:`trainer.runs.publish_run`) and point ``CURRENT`` at it.

Outputs under ``--checkpoint-dir``: ``work/<run-id>/`` (metrics.jsonl, samples.txt, config.json,
state/ for resuming, init/ for a scratch run's starting point), ``cache/`` (tokenized blocks),
``runs/<run-id>/`` and ``CURRENT`` (the published model).

Multi-GPU: launch with ``torchrun --nproc_per_node N -m trainer train ...``. Every rank trains on its own
slice of each step's blocks (DDP averages the gradients); only rank 0 writes files and publishes.

Determinism: the blocks of step ``s`` follow from (seed, s) and the dropout RNG is reseeded from
(seed, rank, s) at every step, so a resumed run repeats an uninterrupted run's losses exactly (on CPU).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig, add_train_arguments
from trainer.errors import UserError

log = logging.getLogger(__name__)

FINISHED_MARKER = "finished"  # in work/<run-id>/ once a run has ended (completed, stopped or published)
TOP_SPEAKERS = 200  # speakers recorded in the manifest for the bot's autocomplete


@dataclass
class TrainResult:
    """How a run ended."""

    run_id: str
    status: str  # "completed", "early_stopped" or "interrupted" (test hook)
    step: int
    val_loss_before: float | None
    best_val_loss: float | None
    best_step: int
    tokens_seen: int
    published: Path | None


def add_parser(subparsers: Any) -> None:
    """Register the ``train`` subcommand."""
    from trainer.prepare import add_corpus_arguments

    parser = subparsers.add_parser(
        "train",
        help="fine-tune GPT-2 on the corpus and publish the best model",
        description="Fine-tune a causal language model (default: gpt2) on the prepared scenes, with "
        "validation perplexity, sample scenes, resumable checkpoints and early stopping, then publish the "
        "best model under <checkpoint-dir>/runs/ and point CURRENT at it.",
    )
    add_corpus_arguments(parser)
    add_train_arguments(parser)
    parser.set_defaults(func=run)


def run(args: Any) -> int:
    """The ``train`` subcommand: resolve the run (new or resumed), prepare the corpus, train."""
    resume_requested = bool(args.resume)
    if resume_requested and not args.run_id:
        args.run_id = latest_unfinished_run(Path(args.checkpoint_dir))
    config = TrainConfig.from_args(args)
    saved_path = config.checkpoint_dir / "work" / config.run_id / "config.json"
    if config.resume and saved_path.is_file():
        config = config.with_run_settings(json.loads(saved_path.read_text(encoding="utf-8")))
    config.validate(need_corpus=True)
    from trainer.prepare import prepare_corpus

    corpus = prepare_corpus(list(config.corpus), config.val_fraction)
    try:
        result = train(config, corpus)
    except OSError as exc:  # disk full, read-only or vanished folder: the last checkpoint is still whole
        reason = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        if isinstance(exc, PermissionError):
            raise UserError(
                f"could not write the run's files{where}: {reason}; make {config.checkpoint_dir} writable "
                "by this user (the Docker images run as uid 1000: sudo chown -R 1000:1000 the host folder)."
            ) from exc
        raise UserError(
            f"could not write the run's files{where}: {reason}; fix that, then continue with "
            f"`python -m trainer train --resume --run-id {config.run_id}`."
        ) from exc
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary, not one per process
        print(summary_line(result), flush=True)
    return 0 if result.status in ("completed", "early_stopped") else 1


def summary_line(result: TrainResult) -> str:
    """One line telling the user how the run ended and what to do next."""
    from trainer.metrics import perplexity

    ppl_before = perplexity(result.val_loss_before) if result.val_loss_before is not None else None
    ppl_after = perplexity(result.best_val_loss) if result.best_val_loss is not None else None
    ppl = f"validation perplexity {ppl_before:.1f} -> {ppl_after:.1f}" if ppl_before and ppl_after else ""
    ended = "stopped early" if result.status == "early_stopped" else result.status
    line = f"run {result.run_id} {ended} at step {result.step}"
    if ppl:
        line += f", {ppl} (best at step {result.best_step})"
    if result.published is not None:
        line += f"; published to {result.published}. Try it: python -m bot console"
    return line + "."


def latest_unfinished_run(checkpoint_dir: Path) -> str:
    """The most recently checkpointed run that has not finished (for ``--resume`` without ``--run-id``)."""
    from trainer.checkpoint import checkpoint_paths

    candidates = []
    work = Path(checkpoint_dir) / "work"
    for run_dir in work.iterdir() if work.is_dir() else []:
        checkpoints = checkpoint_paths(run_dir / "state")
        if checkpoints and not (run_dir / FINISHED_MARKER).exists():
            candidates.append((checkpoints[-1].stat().st_mtime, run_dir.name))
    if not candidates:
        raise UserError(f"--resume found no unfinished run with a checkpoint under {work}.")
    return max(candidates)[1]


# --------------------------------------------------------------------------------------------- setup


@dataclass
class Dist:
    """This process's place in a (possibly single-process) distributed run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and publishes."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op when not distributed)."""
        if self.enabled:
            import torch.distributed

            torch.distributed.barrier()


def init_distributed(device_type: str) -> Dist:
    """Join the process group torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK (nccl on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    import torch.distributed

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(torch.distributed.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(config: TrainConfig) -> Any:
    """The torch device to train on."""
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu.")
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def use_bf16(config: TrainConfig, device: Any) -> bool:
    """bf16 autocast: on where the GPU supports it (auto), or when asked."""
    import torch

    if config.precision == "fp32":
        return False
    if config.precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("--precision bf16 was asked for, but this GPU does not support bf16.")
        return True
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def load_start_model(config: TrainConfig, corpus: Any, work: Path, dist: Dist) -> Any:
    """The model and tokenizer the run starts from (a scratch run's start is saved in work/init)."""
    from trainer.model import build_scratch_model, load_current, load_pretrained, train_bpe_tokenizer

    if config.init == "pretrained":
        return load_pretrained(config.model)
    if config.init == "current":
        return load_current(config.checkpoint_dir)
    init_dir = work / "init"
    if dist.is_main and not (init_dir / "config.json").is_file():
        tokenizer = train_bpe_tokenizer(corpus.train_docs, vocab_size=config.scratch_vocab)
        model = build_scratch_model(
            tokenizer, n_layer=config.scratch_layers, n_embd=config.scratch_dim,
            n_head=config.scratch_heads, n_positions=config.block_size, seed=config.seed,
        )
        _save_model_dir(model, tokenizer, init_dir)
    dist.barrier()
    loaded = load_pretrained(str(init_dir))
    loaded.base_model = (
        f"scratch ({config.scratch_layers} layers, {config.scratch_dim} wide, vocab {config.scratch_vocab})"
    )
    return loaded


def lr_schedule(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup to the peak, then cosine decay to ``min_ratio`` of it at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model: Any, config: TrainConfig, device: Any) -> Any:
    """AdamW with weight decay on matrices only; fused kernels on CUDA."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, fused=device.type == "cuda")


# ------------------------------------------------------------------------------------------ the loop


def train(
    config: TrainConfig, corpus: Any, *, stop_after_step: int | None = None
) -> TrainResult:
    """Train on ``corpus`` (a PreparedCorpus) as ``config`` says; publish the best model when done.

    ``stop_after_step`` ends the process's work abruptly after that step, as if it were killed (tests).
    """
    import torch

    from trainer import checkpoint as ckpt
    from trainer.data import PAD, batch_tensors, load_or_build_blocks, step_block_indices
    from trainer.metrics import MetricsLog, Progress, perplexity
    from trainer.model import tokenizer_hash

    device = pick_device(config)
    dist = init_distributed(device.type)
    work = config.checkpoint_dir / "work" / config.run_id
    state_dir = work / "state"
    metrics = MetricsLog(work / "metrics.jsonl" if dist.is_main else None)
    progress: Progress | None = None
    if not config.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed on Ampere+, same results in bf16
    torch.backends.cudnn.allow_tf32 = True
    status = "failed"
    try:
        latest = ckpt.load_latest_checkpoint(state_dir)
        if latest is not None and not config.resume:
            raise UserError(
                f"run {config.run_id} already has checkpoints in {state_dir}; pass --resume to continue it "
                "or choose another --run-id."
            )
        if config.resume and (work / FINISHED_MARKER).exists():
            raise UserError(f"run {config.run_id} has already finished; there is nothing to resume.")
        if not corpus.train_docs or not corpus.val_docs:
            raise UserError("the corpus has no training or no validation scenes; give it more episodes.")
        if dist.is_main:
            work.mkdir(parents=True, exist_ok=True)
            _write_json(work / "config.json", config.to_json_dict())

        loaded = load_start_model(config, corpus, work, dist)
        model, tokenizer = loaded.model, loaded.tokenizer
        context = getattr(model.config, "n_positions", None) or getattr(
            model.config, "max_position_embeddings", config.block_size
        )
        block_size = min(config.block_size, int(context))
        tok_hash = tokenizer_hash(tokenizer)
        eos = int(tokenizer.eos_token_id)
        blocks = None
        if dist.is_main:  # rank 0 fills the cache; the others then read it
            blocks = load_or_build_blocks(
                corpus.train_docs, corpus.val_docs, tokenizer, corpus_sha256=corpus.corpus_sha256,
                tokenizer_sha256=tok_hash, block_size=block_size, cache_dir=config.cache_path,
            )
        dist.barrier()
        if blocks is None:
            blocks = load_or_build_blocks(
                corpus.train_docs, corpus.val_docs, tokenizer, corpus_sha256=corpus.corpus_sha256,
                tokenizer_sha256=tok_hash, block_size=block_size, cache_dir=config.cache_path,
            )
        train_blocks, val_blocks = blocks.train, blocks.val

        per_step = config.batch_size * config.grad_accum * dist.world_size
        total_steps = config.steps
        if config.epochs is not None:
            total_steps = max(1, math.ceil(config.epochs * len(train_blocks) / per_step))

        model.config.use_cache = False  # no KV cache while training: it only costs memory
        if getattr(model, "loss_type", None) is None:
            model.loss_type = "ForCausalLM"  # what transformers picks anyway, minus its warning on every run
        model.to(device)
        bf16 = use_bf16(config, device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        optimizer = make_optimizer(model, config, device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_schedule(config.warmup_steps, total_steps, config.min_lr_ratio)
        )

        step = 0
        tokens_seen = 0
        elapsed_before = 0.0
        val_before: float | None = None
        best_val = math.inf
        best_step = 0
        bad_evals = 0
        best_weights: dict[str, torch.Tensor] = {}  # CPU copy of the weights with the best val loss
        if latest is not None:
            ckpt.load_weights(model, latest.path)
            saved = latest.state
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            ckpt.set_rng_state(saved["rng"])
            step, tokens_seen = int(saved["step"]), int(saved["tokens_seen"])
            elapsed_before = float(saved["elapsed_s"])
            val_before = saved["val_loss_before"]
            best_val, best_step, bad_evals = float(saved["best_val_loss"]), int(saved["best_step"]), int(
                saved["bad_evals"]
            )
            if saved["corpus_sha256"] != corpus.corpus_sha256:
                raise UserError(
                    f"the corpus changed since run {config.run_id} started; resume with the same corpus "
                    "or start a new run."
                )
            if saved["tokenizer_hash"] != tok_hash:
                raise UserError(
                    f"run {config.run_id} started with another tokenizer than {loaded.base_model} has now "
                    "(did CURRENT change?); start a new run instead of resuming."
                )
            # A checkpoint taken right at a new best stores no separate best weights: they are these.
            best_weights = ckpt.load_best_weights(latest.path) or _weights_copy(model.state_dict())
            total_steps = int(saved["total_steps"])

        train_model: Any = model
        compile_on = config.compile if config.compile is not None else device.type == "cuda"
        if compile_on:
            train_model = torch.compile(model)
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            train_model = DistributedDataParallel(
                train_model, device_ids=[device.index] if device.type == "cuda" else None
            )

        def evaluate() -> float:
            """Mean validation loss per predicted token (all ranks' shares combined)."""
            model.eval()
            batches = math.ceil(len(val_blocks) / config.batch_size)
            if config.eval_batches:
                batches = min(batches, config.eval_batches)
            totals = torch.zeros(2, dtype=torch.float64, device=device)
            with torch.no_grad(), autocast:
                for b in range(dist.rank, batches, dist.world_size):
                    chunk = val_blocks[b * config.batch_size : (b + 1) * config.batch_size]
                    x, y = (t.to(device) for t in batch_tensors(chunk, eos))
                    predicted = int((y[:, 1:] != -100).sum())  # the model shifts labels by one
                    if predicted == 0:
                        continue
                    totals[0] += model(input_ids=x, labels=y).loss.double() * predicted
                    totals[1] += predicted
            if dist.enabled:
                torch.distributed.all_reduce(totals)
            model.train()
            return float(totals[0] / totals[1]) if totals[1] > 0 else math.nan

        def sample() -> str:
            """A generated scene from the top speakers, without disturbing the training RNG."""
            from trainer.scene_format import build_prompt

            prompt = build_prompt(characters=list(corpus.speakers[:2]))
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
            devices = [device.index] if device.type == "cuda" else []
            model.eval()
            with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast:
                torch.manual_seed(config.seed + step)
                out = model.generate(
                    ids, max_new_tokens=config.sample_tokens, do_sample=True, top_k=50,
                    pad_token_id=eos, eos_token_id=eos, use_cache=True,
                )
            model.train()
            return prompt + tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

        def save_state() -> None:
            """A resumable checkpoint (rank 0 writes; every rank waits for it)."""
            if dist.is_main:
                trainer_state = {
                    "step": step, "total_steps": total_steps, "tokens_seen": tokens_seen,
                    "elapsed_s": elapsed_before + (time.perf_counter() - started),
                    "val_loss_before": val_before, "best_val_loss": best_val, "best_step": best_step,
                    "bad_evals": bad_evals, "seed": config.seed,
                    "epoch": step * per_step // len(train_blocks),
                    "corpus_sha256": corpus.corpus_sha256, "tokenizer_hash": tok_hash,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": ckpt.rng_state(),
                }
                best = best_weights if best_step != step else None
                path = ckpt.save_checkpoint(state_dir, step, model, trainer_state, best)
                metrics.write("checkpoint", step=step, path=str(path))
            dist.barrier()

        metrics.write("start", run_id=config.run_id, total_steps=total_steps,
                      resumed_from=step if latest is not None else None, base_model=loaded.base_model,
                      device=str(device), world_size=dist.world_size, bf16=bf16, compile=compile_on,
                      block_size=block_size, train_blocks=len(train_blocks), val_blocks=len(val_blocks))
        started = time.perf_counter()
        if latest is None:
            val_before = best_val = evaluate()
            best_weights = _weights_copy(model.state_dict())  # publishing the start beats publishing worse
            metrics.write("eval", step=0, val_loss=val_before, val_ppl=perplexity(val_before),
                          best_val_loss=best_val)
        progress = Progress(total_steps, step, enabled=config.progress and dist.is_main)
        window_start, window_tokens = time.perf_counter(), 0
        model.train()
        status = "completed"
        while step < total_steps:
            # Dropout depends only on (seed, rank, step): resuming needs no RNG replay.
            torch.manual_seed(config.seed * 1_000_003 + dist.rank * 10_007 + step)
            micro = step_block_indices(
                step, num_blocks=len(train_blocks), per_step=per_step, seed=config.seed,
                rank=dist.rank, world_size=dist.world_size, micro_batches=config.grad_accum,
            )
            loss_sum = torch.zeros((), device=device)
            for m, indices in enumerate(micro):
                chunk = train_blocks[indices]
                x, y = batch_tensors(chunk, eos)
                if device.type == "cuda":
                    # Pinned host memory lets the copy overlap with the previous micro-batch's kernels.
                    x = x.pin_memory().to(device, non_blocking=True)
                    y = y.pin_memory().to(device, non_blocking=True)
                last = m == len(micro) - 1
                sync = contextlib.nullcontext() if (last or not dist.enabled) else train_model.no_sync()
                with sync, autocast:
                    loss = train_model(input_ids=x, labels=y).loss / config.grad_accum
                loss.backward()
                loss_sum += loss.detach()
                counted = int((chunk != PAD).sum()) * dist.world_size  # ranks' blocks are alike in size
                window_tokens += counted
                tokens_seen += counted
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            if step % config.log_every == 0 or step == total_steps:
                if dist.enabled:
                    torch.distributed.all_reduce(loss_sum)
                    loss_sum /= dist.world_size
                now = time.perf_counter()
                rate = window_tokens / max(now - window_start, 1e-9)
                step_time = (now - window_start) / config.log_every
                eta = step_time * (total_steps - step)
                loss_value = float(loss_sum)
                lr = scheduler.get_last_lr()[0]
                metrics.write("step", step=step, total_steps=total_steps, loss=loss_value, lr=lr,
                              tokens_per_s=rate, eta_s=eta, elapsed_s=elapsed_before + now - started)
                progress.update(step, loss=loss_value, tok_s=f"{rate:,.0f}", lr=lr)
                window_start, window_tokens = now, 0

            stop = False
            if step % config.eval_every == 0 or step == total_steps:
                val = evaluate()
                if val < best_val:
                    best_val, best_step, bad_evals = val, step, 0
                    best_weights = _weights_copy(model.state_dict())  # training goes on: keep a copy
                else:
                    bad_evals += 1
                metrics.write(
                    "eval", step=step, val_loss=val, val_ppl=perplexity(val), best_val_loss=best_val
                )
                progress.write(f"step {step}: val loss {val:.4f}, ppl {perplexity(val):.2f}")
                if config.patience and bad_evals >= config.patience and step < total_steps:
                    metrics.write("early_stop", step=step, best_val_loss=best_val, patience=config.patience)
                    status, stop = "early_stopped", True
            if config.sample_every and step % config.sample_every == 0 and dist.is_main:
                text = sample()
                with open(work / "samples.txt", "a", encoding="utf-8") as handle:
                    handle.write(f"===== step {step} =====\n{text}\n\n")
                metrics.write("sample", step=step, text=text)
            if step % config.checkpoint_every == 0 and not stop:
                save_state()
            if stop_after_step is not None and step >= stop_after_step:
                progress.close()
                return TrainResult(config.run_id, "interrupted", step, val_before, best_val, best_step,
                                   tokens_seen, None)
            if stop:
                break
        progress.close()

        published = None
        if config.publish and dist.is_main:
            if best_step != step:
                _load_weights(model, best_weights)
            published = publish_model(
                config, corpus, model, tokenizer, base_model=loaded.base_model, tok_hash=tok_hash,
                step=step, tokens_seen=tokens_seen, val_before=val_before, best_val=best_val,
                best_step=best_step,
            )
            metrics.write("published", run_id=config.run_id, path=str(published),
                          val_ppl_before=perplexity(val_before) if val_before is not None else None,
                          val_ppl_after=perplexity(best_val))
        dist.barrier()
        if dist.is_main:
            (work / FINISHED_MARKER).write_text(status + "\n", encoding="utf-8")
        metrics.write("done", status=status, step=step)
        return TrainResult(
            config.run_id, status, step, val_before, best_val, best_step, tokens_seen, published
        )
    except BaseException as exc:
        if progress is not None:  # end the bar's line so the error is printed on a line of its own
            progress.close()
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        metrics.write("error", message=message)
        metrics.write("done", status="failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted")
        raise
    finally:
        metrics.close()
        if dist.enabled:
            import torch.distributed

            torch.distributed.destroy_process_group()


def _weights_copy(weights: dict[str, Any]) -> dict[str, Any]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights.items()}


def _load_weights(model: Any, weights: dict[str, Any]) -> None:
    """Load (possibly tie-deduplicated) weights into ``model``."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any("lm_head" not in name for name in missing):
        raise RuntimeError(f"best weights do not fit the model (missing {missing}, unexpected {unexpected})")
    model.tie_weights()


def publish_model(
    config: TrainConfig, corpus: Any, model: Any, tokenizer: Any, *, base_model: str, tok_hash: str,
    step: int, tokens_seen: int, val_before: float | None, best_val: float, best_step: int,
) -> Path:
    """Publish ``model`` + tokenizer + generation config as run ``config.run_id`` and point CURRENT at it."""
    from trainer.metrics import perplexity
    from trainer.runs import InvalidRunError, Manifest, load_run, publish_run, set_current
    from trainer.scene_format import SCENE_FORMAT_VERSION

    try:  # a resumed run whose earlier publish died after the rename: only the pointer is missing
        done = load_run(config.checkpoint_dir, config.run_id)
        set_current(config.checkpoint_dir, config.run_id)
        return done.path
    except InvalidRunError:
        pass
    manifest = Manifest(
        run_id=config.run_id,
        base_model=base_model,
        corpus_sha256=corpus.corpus_sha256,
        tokenizer_hash=tok_hash,
        scene_format_version=SCENE_FORMAT_VERSION,
        steps=step,
        tokens_seen=tokens_seen,
        val_loss_before=val_before,
        val_ppl_before=perplexity(val_before) if val_before is not None else None,
        val_loss_after=best_val,
        val_ppl_after=perplexity(best_val),
        speakers=tuple(corpus.speakers[:TOP_SPEAKERS]),
        extra={"best_step": best_step, "settings": config.to_json_dict()},
    )
    info = publish_run(
        config.checkpoint_dir, manifest, lambda staging: _save_model_dir(model, tokenizer, staging)
    )
    return info.path


def _save_model_dir(model: Any, tokenizer: Any, path: Path) -> None:
    """save_pretrained layout: safetensors weights, config, generation config, tokenizer."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    model.config.use_cache = True  # the served model generates: the KV cache is what makes that fast
    model.generation_config = GenerationConfig(
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, do_sample=True, top_k=50, max_new_tokens=300,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
