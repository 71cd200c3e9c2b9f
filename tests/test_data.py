"""Packing documents into blocks, the on-disk block cache, and the per-step data order."""

import torch

from tests.tiny import make_scene_documents, make_tiny_tokenizer
from trainer import data
from trainer.model import tokenizer_hash
from trainer.scene_format import HEADER, join_documents


def test_stream_equals_tokenizing_the_joined_documents():
    """Tokenizing documents one by one gives exactly the tokens of join_documents(docs, eos)."""
    docs = make_scene_documents(10)
    tokenizer = make_tiny_tokenizer(docs)
    joined = join_documents(docs, tokenizer.eos_token)
    expected = tokenizer(joined, add_special_tokens=False)["input_ids"]
    assert data.tokenize_documents(docs, tokenizer) == expected


def test_packing_loses_no_token_and_pads_only_the_tail():
    """Every token survives packing in order; only the last block carries padding."""
    stream = list(range(100, 203))  # 103 tokens: 6 full blocks of 16 and a tail of 7
    blocks = data.pack_blocks(stream, 16)
    assert blocks.shape == (7, 16)
    assert data.unpack_blocks(blocks) == stream
    assert (blocks[:-1] != data.PAD).all()
    assert (blocks[-1, 7:] == data.PAD).all() and (blocks[-1, :7] != data.PAD).all()


def test_exact_multiple_has_no_padded_block():
    """A stream that fills whole blocks gets no extra block."""
    assert data.pack_blocks(list(range(32)), 16).shape == (2, 16)


def test_padding_is_ignored_by_the_loss_and_fed_as_eos():
    """Padded positions become eos in input_ids and -100 in labels."""
    blocks = data.pack_blocks([5, 6, 7], 4)
    inputs, labels = data.batch_tensors(blocks, eos_token_id=0)
    assert inputs.tolist() == [[5, 6, 7, 0]]
    assert labels.tolist() == [[5, 6, 7, -100]]


def test_scenes_are_separated_by_eos_in_the_blocks():
    """Each scene header is preceded by eos (except at the very start), and the stream ends with eos."""
    docs = make_scene_documents(8)
    tokenizer = make_tiny_tokenizer(docs)
    blocks = data.pack_blocks(data.tokenize_documents(docs, tokenizer), 32)
    stream = data.unpack_blocks(blocks)
    eos = tokenizer.eos_token_id
    assert stream.count(eos) == len(docs) and stream[-1] == eos
    pieces = tokenizer.decode(stream).split(tokenizer.eos_token)
    assert pieces[:-1] == docs and pieces[-1] == ""
    assert all(piece.startswith(HEADER) for piece in pieces[:-1])


def test_second_run_reads_the_cache_without_tokenizing(tmp_path):
    """The cache is keyed by corpus, tokenizer and block size; a hit skips tokenization entirely."""
    docs = make_scene_documents(12)
    tokenizer = make_tiny_tokenizer(docs)
    kwargs = dict(corpus_sha256="a" * 64, tokenizer_sha256=tokenizer_hash(tokenizer), block_size=32,
                  cache_dir=tmp_path)
    first = data.load_or_build_blocks(docs[:9], docs[9:], tokenizer, **kwargs)
    (cache_file,) = tmp_path.glob("blocks-*.safetensors")
    mtime = cache_file.stat().st_mtime_ns
    calls = data.tokenize_calls
    second = data.load_or_build_blocks(docs[:9], docs[9:], tokenizer, **kwargs)
    assert not first.from_cache and second.from_cache
    assert data.tokenize_calls == calls, "a cache hit must not tokenize"
    assert cache_file.stat().st_mtime_ns == mtime
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    assert not list(tmp_path.glob(".*")), "no temporary file is left behind"

    data.load_or_build_blocks(docs[:9], docs[9:], tokenizer, **{**kwargs, "block_size": 16})
    data.load_or_build_blocks(docs[:9], docs[9:], tokenizer, **{**kwargs, "corpus_sha256": "b" * 64})
    assert len(list(tmp_path.glob("blocks-*.safetensors"))) == 3, "block size and corpus are in the key"


def test_damaged_cache_is_rebuilt(tmp_path):
    """A truncated cache file is not trusted: the blocks are tokenized again."""
    docs = make_scene_documents(6)
    tokenizer = make_tiny_tokenizer(docs)
    kwargs = dict(corpus_sha256="a" * 64, tokenizer_sha256="t", block_size=32, cache_dir=tmp_path)
    good = data.load_or_build_blocks(docs[:4], docs[4:], tokenizer, **kwargs)
    (cache_file,) = tmp_path.glob("blocks-*.safetensors")
    cache_file.write_bytes(cache_file.read_bytes()[:20])
    again = data.load_or_build_blocks(docs[:4], docs[4:], tokenizer, **kwargs)
    assert not again.from_cache and torch.equal(good.train, again.train)


def test_each_epoch_visits_every_block_once_and_ranks_split_a_step():
    """Steps walk a seeded permutation per epoch; two ranks see disjoint halves of one step's blocks."""
    num_blocks, per_step = 12, 4
    seen = [i for step in range(3) for micro in data.step_block_indices(
        step, num_blocks=num_blocks, per_step=per_step, seed=7) for i in micro]
    assert sorted(seen) == list(range(num_blocks))
    single = data.step_block_indices(5, num_blocks=num_blocks, per_step=per_step, seed=7)[0]
    rank0 = data.step_block_indices(5, num_blocks=num_blocks, per_step=per_step, seed=7, rank=0, world_size=2)
    rank1 = data.step_block_indices(5, num_blocks=num_blocks, per_step=per_step, seed=7, rank=1, world_size=2)
    assert sorted(rank0[0] + rank1[0]) == sorted(single)
    assert not set(rank0[0]) & set(rank1[0])
    accum = data.step_block_indices(5, num_blocks=num_blocks, per_step=per_step, seed=7, micro_batches=2)
    assert [i for micro in accum for i in micro] == single
