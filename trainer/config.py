"""Training settings: each a ``train`` flag with a ``MAESTER_*`` environment default, checked in one place.

:func:`add_train_arguments` declares the flags, :meth:`TrainConfig.from_args` builds the typed config and
:meth:`TrainConfig.validate` turns every bad value into one :class:`~trainer.errors.UserError` sentence.
"""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from trainer.envargs import env_bool_flag, env_flag, parse_bool
from trainer.errors import UserError

INIT_CHOICES = ("pretrained", "scratch", "current")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("auto", "bf16", "fp32")

# Settings that define what a run computes; a resumed run keeps the values it started with.
RUN_DEFINING = (
    "model", "init", "scratch_layers", "scratch_dim", "scratch_heads", "scratch_vocab", "block_size",
    "batch_size", "grad_accum", "steps", "epochs", "lr", "min_lr_ratio", "warmup_steps", "weight_decay",
    "grad_clip", "eval_every", "eval_batches", "patience", "sample_every", "sample_tokens",
    "checkpoint_every", "seed", "precision", "val_fraction", "corpus",
)


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261126-124501-ab12``."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


@dataclass
class TrainConfig:
    """Everything a training run needs to know; defaults are the documented product defaults."""

    corpus: tuple[Path, ...] = ()
    val_fraction: float = 0.1
    # GPT-2 small (124M): fits any recent GPU and fine-tunes on the scripts in minutes.
    model: str = "gpt2"
    init: str = "pretrained"
    # Scratch model: small enough to train on a CPU, big enough to learn the scene format.
    scratch_layers: int = 4
    scratch_dim: int = 256
    scratch_heads: int = 4
    scratch_vocab: int = 8192
    # GPT-2's full context: a scene plus its neighbours fits in one block.
    block_size: int = 1024
    # 8 blocks x 1024 tokens = 8k tokens per optimizer step. For GPT-2 124M in bf16 with SDPA this fits
    # a 16 GB card with room for compile's buffers; the scripts are ~0.8M tokens, so 1000 steps are
    # ~10 epochs, and early stopping on validation loss ends the run once it starts to overfit.
    # Bigger effective batches only slow fine-tuning down here (fewer updates per epoch).
    batch_size: int = 8
    grad_accum: int = 1  # raise it (and lower --batch-size) on cards with less memory
    steps: int = 1000  # the original exercise's length
    epochs: float | None = None  # when set, overrides --steps
    lr: float = 1e-4  # the original exercise's rate; safe for fine-tuning GPT-2
    min_lr_ratio: float = 0.1  # cosine decays to 10% of lr, as in nanoGPT
    warmup_steps: int = 50  # ~5% of the run: enough to settle AdamW's moments
    weight_decay: float = 0.01  # light: fine-tuning should not drag pretrained weights towards zero
    grad_clip: float = 1.0  # 0 disables
    # Each epoch of the scripts is ~60 steps at 8k tokens a step: evaluating every 50 steps and stopping
    # after 3 evaluations without improvement ends an overfitting run ~150 steps past its best.
    eval_every: int = 50
    eval_batches: int = 50  # caps each evaluation at 50 batches (0 = the whole validation set)
    patience: int = 3  # evaluations without improvement before stopping (0 = never stop early)
    sample_every: int = 250
    sample_tokens: int = 200
    checkpoint_every: int = 100
    seed: int = 1234
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast where the GPU supports it, else fp32
    compile: bool | None = None  # None: on for CUDA, off for CPU (compiling costs more than it saves)
    checkpoint_dir: Path = Path("checkpoints")
    cache_dir: Path | None = None  # default: <checkpoint-dir>/cache
    run_id: str = field(default_factory=new_run_id)
    resume: bool = False
    publish: bool = True
    progress: bool = True
    log_every: int = 10

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """Build a config from parsed ``train`` arguments (validated)."""
        corpus = getattr(args, "corpus", None) or ()
        if isinstance(corpus, (str, Path)):
            corpus = (corpus,)
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values["corpus"] = tuple(Path(p) for p in corpus)
        values["checkpoint_dir"] = Path(values.get("checkpoint_dir") or "checkpoints")
        if values.get("cache_dir"):
            values["cache_dir"] = Path(values["cache_dir"])
        if not values.get("run_id"):
            values.pop("run_id", None)
        config = cls(**values)
        config.validate(need_corpus=False)  # the corpus is checked once a resumed run's settings are merged
        return config

    @property
    def cache_path(self) -> Path:
        """Where tokenized blocks are cached."""
        return self.cache_dir if self.cache_dir is not None else self.checkpoint_dir / "cache"

    def validate(self, *, need_corpus: bool = True) -> None:
        """Raise a UserError naming the first bad setting."""
        checks: list[tuple[bool, str]] = [
            (self.init in INIT_CHOICES, f"--init must be one of {', '.join(INIT_CHOICES)}."),
            (self.device in DEVICE_CHOICES, f"--device must be one of {', '.join(DEVICE_CHOICES)}."),
            (
                self.precision in PRECISION_CHOICES,
                f"--precision must be one of {', '.join(PRECISION_CHOICES)}.",
            ),
            (bool(self.model), "--model must name a Hugging Face model or a local model directory."),
            (self.block_size >= 8, f"--block-size must be at least 8 tokens, not {self.block_size}."),
            (self.batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}."),
            (self.grad_accum >= 1, f"--grad-accum must be at least 1, not {self.grad_accum}."),
            (self.steps >= 1, f"--steps must be at least 1, not {self.steps}."),
            (self.epochs is None or self.epochs > 0, f"--epochs must be positive, not {self.epochs}."),
            (self.lr > 0, f"--lr must be a positive learning rate, not {self.lr}."),
            (0 <= self.min_lr_ratio <= 1, f"--min-lr-ratio must be from 0 to 1, not {self.min_lr_ratio}."),
            (self.warmup_steps >= 0, f"--warmup-steps must be 0 or more, not {self.warmup_steps}."),
            (self.weight_decay >= 0, f"--weight-decay must be 0 or more, not {self.weight_decay}."),
            (self.grad_clip >= 0, f"--grad-clip must be 0 (off) or more, not {self.grad_clip}."),
            (self.eval_every >= 1, f"--eval-every must be at least 1 step, not {self.eval_every}."),
            (self.eval_batches >= 0, f"--eval-batches must be 0 (all) or more, not {self.eval_batches}."),
            (self.patience >= 0, f"--patience must be 0 (off) or more evaluations, not {self.patience}."),
            (self.sample_every >= 0, f"--sample-every must be 0 (off) or more, not {self.sample_every}."),
            (self.sample_tokens >= 1, f"--sample-tokens must be at least 1, not {self.sample_tokens}."),
            (
                self.checkpoint_every >= 1,
                f"--checkpoint-every must be at least 1 step, not {self.checkpoint_every}.",
            ),
            (self.log_every >= 1, f"--log-every must be at least 1 step, not {self.log_every}."),
            (0 < self.val_fraction < 1, f"--val-fraction must be between 0 and 1, not {self.val_fraction}."),
            (self.scratch_layers >= 1, f"--scratch-layers must be at least 1, not {self.scratch_layers}."),
            (self.scratch_heads >= 1, f"--scratch-heads must be at least 1, not {self.scratch_heads}."),
            (
                self.scratch_dim >= 8 and self.scratch_dim % self.scratch_heads == 0,
                f"--scratch-dim must be a multiple of --scratch-heads ({self.scratch_heads}), "
                f"not {self.scratch_dim}.",
            ),
            (
                self.scratch_vocab >= 257,
                f"--scratch-vocab must be at least 257 (all bytes + eos), not {self.scratch_vocab}.",
            ),
            (
                bool(self.run_id) and "/" not in self.run_id and not self.run_id.startswith("."),
                f"--run-id {self.run_id!r} must be a plain name (no '/', not starting with '.').",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if need_corpus:
            if not self.corpus:
                raise UserError("no corpus given: pass --corpus with the script files to train on.")
            for path in self.corpus:
                if not Path(path).exists():
                    raise UserError(f"corpus file {path} does not exist.")

    def to_json_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (recorded in the manifest and the run's work directory)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
            elif isinstance(value, tuple):
                data[key] = [str(item) for item in value]
        return data

    def with_run_settings(self, saved: dict[str, Any]) -> TrainConfig:
        """This config with the run-defining settings a resumed run started with."""
        updates: dict[str, Any] = {}
        for key in RUN_DEFINING:
            if key in saved:
                value = saved[key]
                updates[key] = tuple(Path(p) for p in value) if key == "corpus" else value
        return replace(self, **updates)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare every ``train`` flag (except the corpus flags, which the corpus module owns)."""
    d = TrainConfig
    model = parser.add_argument_group("model")
    env_flag(model, "--model", env="MAESTER_MODEL", default=d.model,
             help="Hugging Face model name or local model directory to fine-tune (with --init pretrained)")
    env_flag(model, "--init", env="MAESTER_INIT", default=d.init, choices=INIT_CHOICES,
             help="start from a pretrained model, from scratch (new tokenizer trained on the corpus), "
                  "or from the published run CURRENT names")
    env_flag(model, "--scratch-layers", env="MAESTER_SCRATCH_LAYERS", default=d.scratch_layers, type=int,
             help="transformer layers of a --init scratch model")
    env_flag(model, "--scratch-dim", env="MAESTER_SCRATCH_DIM", default=d.scratch_dim, type=int,
             help="embedding width of a --init scratch model")
    env_flag(model, "--scratch-heads", env="MAESTER_SCRATCH_HEADS", default=d.scratch_heads, type=int,
             help="attention heads of a --init scratch model")
    env_flag(model, "--scratch-vocab", env="MAESTER_SCRATCH_VOCAB", default=d.scratch_vocab, type=int,
             help="vocabulary size of the tokenizer trained for --init scratch")

    optim = parser.add_argument_group("optimisation")
    env_flag(optim, "--block-size", env="MAESTER_BLOCK_SIZE", default=d.block_size, type=int,
             help="tokens per training block (clipped to the model's context length)")
    env_flag(optim, "--batch-size", env="MAESTER_BATCH_SIZE", default=d.batch_size, type=int,
             help="blocks per micro-batch on each device")
    env_flag(optim, "--grad-accum", env="MAESTER_GRAD_ACCUM", default=d.grad_accum, type=int,
             help="micro-batches accumulated per optimizer step")
    env_flag(optim, "--steps", env="MAESTER_STEPS", default=d.steps, type=int, help="optimizer steps")
    env_flag(optim, "--epochs", env="MAESTER_EPOCHS", default=d.epochs, type=float,
             help="train for this many passes over the training blocks instead of --steps")
    env_flag(optim, "--lr", env="MAESTER_LR", default=d.lr, type=float, help="peak learning rate")
    env_flag(optim, "--min-lr-ratio", env="MAESTER_MIN_LR_RATIO", default=d.min_lr_ratio, type=float,
             help="final learning rate of the cosine schedule, as a fraction of --lr")
    env_flag(optim, "--warmup-steps", env="MAESTER_WARMUP_STEPS", default=d.warmup_steps, type=int,
             help="linear warmup steps")
    env_flag(optim, "--weight-decay", env="MAESTER_WEIGHT_DECAY", default=d.weight_decay, type=float,
             help="AdamW weight decay (not applied to biases and layer norms)")
    env_flag(optim, "--grad-clip", env="MAESTER_GRAD_CLIP", default=d.grad_clip, type=float,
             help="clip the gradient norm to this value (0 = off)")
    env_flag(optim, "--seed", env="MAESTER_SEED", default=d.seed, type=int,
             help="seed for weights (scratch), data order, dropout and samples")

    evals = parser.add_argument_group("evaluation and samples")
    env_flag(evals, "--eval-every", env="MAESTER_EVAL_EVERY", default=d.eval_every, type=int,
             help="evaluate validation loss every N steps (also at the start and the end)")
    env_flag(evals, "--eval-batches", env="MAESTER_EVAL_BATCHES", default=d.eval_batches, type=int,
             help="validation batches per evaluation (0 = all)")
    env_flag(evals, "--patience", env="MAESTER_PATIENCE", default=d.patience, type=int,
             help="stop after this many evaluations without a better validation loss (0 = never)")
    env_flag(evals, "--sample-every", env="MAESTER_SAMPLE_EVERY", default=d.sample_every, type=int,
             help="write a generated sample scene every N steps (0 = off)")
    env_flag(evals, "--sample-tokens", env="MAESTER_SAMPLE_TOKENS", default=d.sample_tokens, type=int,
             help="tokens per sample scene")

    runtime = parser.add_argument_group("hardware")
    env_flag(runtime, "--device", env="MAESTER_DEVICE", default=d.device, choices=DEVICE_CHOICES,
             help="where to train (auto: CUDA when available)")
    env_flag(runtime, "--precision", env="MAESTER_PRECISION", default=d.precision, choices=PRECISION_CHOICES,
             help="bf16 autocast or fp32 (auto: bf16 on GPUs that support it)")
    runtime.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=_env_compile(),
        help="torch.compile the model [env MAESTER_COMPILE; default: on for CUDA, off for CPU]",
    )

    outputs = parser.add_argument_group("runs and outputs")
    env_flag(outputs, "--checkpoint-dir", env="MAESTER_CHECKPOINT_DIR", default=str(d.checkpoint_dir),
             help="root of runs/, work/, cache/ and CURRENT")
    env_flag(outputs, "--cache-dir", env="MAESTER_CACHE_DIR", default=None,
             help="where tokenized blocks are cached; None means <checkpoint-dir>/cache")
    env_flag(outputs, "--run-id", env="MAESTER_RUN_ID", default=None,
             help="name of this run; None means a new timestamp id such as 20261126-124501-ab12")
    env_flag(outputs, "--checkpoint-every", env="MAESTER_CHECKPOINT_EVERY", default=d.checkpoint_every,
             type=int, help="save resumable state every N steps (the last 2 are kept)")
    env_flag(outputs, "--log-every", env="MAESTER_LOG_EVERY", default=d.log_every, type=int,
             help="write a step line to metrics.jsonl every N steps")
    outputs.add_argument("--resume", action="store_true",
                         help="continue the run named by --run-id (or the latest unfinished run) "
                              "from its last checkpoint")
    env_bool_flag(outputs, "--publish", env="MAESTER_PUBLISH", default=True,
                  help="publish the best model and point CURRENT at it when training ends")
    env_bool_flag(outputs, "--progress", env="MAESTER_PROGRESS", default=True,
                  help="show a progress bar")


def _env_compile() -> bool | None:
    """MAESTER_COMPILE as a bool, or None (decide by device) when unset."""
    raw = os.environ.get("MAESTER_COMPILE")
    return parse_bool(raw, "MAESTER_COMPILE") if raw else None
