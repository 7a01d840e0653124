import io

import numpy as np
import pytest
import torch

from lmforge.data import BatchSampler, iter_eval_blocks
from lmforge.errors import LmforgeError

TOKENS = np.arange(1000, dtype=np.uint16)  # token i has value i, so a block shows where it came from


def test_shapes_dtypes_and_shift():
    x, y = BatchSampler(TOKENS, batch_size=4, seq_len=16, seed=0).next()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # next token
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(4, 16))  # contiguous blocks


def test_offsets_cover_every_valid_start_and_no_more():
    tokens = np.arange(11, dtype=np.uint16)
    sampler = BatchSampler(tokens, batch_size=64, seq_len=8, seed=0)
    starts = {int(s) for _ in range(5) for s in sampler.next()[0][:, 0]}
    assert starts == {0, 1, 2}  # the last target is the last token


def test_reads_a_memmap(tmp_path):
    TOKENS.tofile(tmp_path / "t.bin")
    tokens = np.memmap(tmp_path / "t.bin", dtype=np.uint16, mode="r")
    for a, b in zip(BatchSampler(tokens, 2, 8, seed=0).next(), BatchSampler(TOKENS, 2, 8, seed=0).next(), strict=True):
        assert torch.equal(a, b)


def test_seed_determines_batches_and_global_rng_is_untouched():
    rng = torch.get_rng_state()
    a = [BatchSampler(TOKENS, 4, 8, seed=1).next()[0] for _ in range(2)]
    assert torch.equal(a[0], a[1])
    assert torch.equal(torch.get_rng_state(), rng)
    assert not torch.equal(a[0], BatchSampler(TOKENS, 4, 8, seed=2).next()[0])
    torch.manual_seed(123)
    assert torch.equal(a[0], BatchSampler(TOKENS, 4, 8, seed=1).next()[0])


def test_state_dict_resumes_exactly():
    sampler = BatchSampler(TOKENS, 4, 8, seed=0)
    for _ in range(3):
        sampler.next()
    state = sampler.state_dict()
    expected = [sampler.next() for _ in range(3)]

    buffer = io.BytesIO()
    torch.save(state, buffer)  # as a checkpoint would store it
    buffer.seek(0)
    restored = BatchSampler(TOKENS, 4, 8, seed=99)
    restored.load_state_dict(torch.load(buffer))
    assert restored.batches == 3
    for x, y in expected:
        rx, ry = restored.next()
        assert torch.equal(rx, x) and torch.equal(ry, y)
    assert state["generator"].dtype == torch.uint8


def test_too_few_tokens():
    BatchSampler(np.arange(9), 1, 8, seed=0)  # exactly seq_len + 1 works
    with pytest.raises(LmforgeError, match="has 8 tokens, fewer than seq_len\\+1"):
        BatchSampler(np.arange(8), 1, 8, seed=0)


@pytest.mark.parametrize("n", [101, 103, 110])
def test_eval_blocks_cover_the_split_once_in_order(n):
    tokens = np.arange(n, dtype=np.uint16)
    batches = list(iter_eval_blocks(tokens, batch_size=4, seq_len=10))
    assert [len(x) for x, _ in batches] == [4, 4, 2]  # (n - 1) // 10 = 10 full blocks
    x = torch.cat([x for x, _ in batches]).flatten()
    y = torch.cat([y for _, y in batches]).flatten()
    assert torch.equal(x, torch.arange(100)) and torch.equal(y, torch.arange(1, 101))


def test_eval_blocks_too_short():
    with pytest.raises(LmforgeError, match="validation split has 10 tokens"):
        iter_eval_blocks(np.arange(10), 4, 10)
