import torch
from helpers import tiny_gpt

from lmforge.training.memory import MB, MemoryMeter, summary


def test_split_counts_each_part_and_the_peak_beyond_them():
    model = tiny_gpt(gpt2_init=True)
    optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
    meter = MemoryMeter(model, optimizer, torch.device("cpu"))
    model(torch.randint(0, 23, (2, 8))).sum().backward()
    optimizer.step()
    held = torch.ones(40 * MB // 4)  # 40 MB held at the peak, as activations are
    del held
    split = meter.split()
    params = list(model.parameters())
    weights = sum(p.numel() for p in params) * 4
    assert split["mem_weights_mb"] * MB == split["mem_grads_mb"] * MB == weights
    assert split["mem_optimizer_mb"] * MB == 2 * weights + 4 * len(params)  # exp_avg, exp_avg_sq and a step each
    assert split["mem_activations_mb"] >= 39
    assert split["peak_mem_mb"] >= split["mem_other_mb"] + split["mem_weights_mb"] + split["mem_activations_mb"]
    line = summary(split, torch.device("cpu"))
    assert "\n" not in line and line.startswith("memory: peak") and "largest part: activations" in line
    assert meter.report(final=False) and not meter.report(final=False) and meter.report(final=True)


def test_tensor_peak_counts_live_storage_from_creation_to_release():
    from lmforge.training.memory import TensorPeak

    with TensorPeak(held=MB) as meter:
        a = torch.ones(MB // 4)  # 1 MB
        b = a * 2  # 1 MB more: 3 MB with the held 1 MB
        view = b[: MB // 8]  # a view is no new storage
        del a
        c = b + 1  # 3 MB again
        del b, view, c
        d = torch.ones(MB // 2)  # 2 MB, beside the held 1 MB
    assert meter.peak == 3 * MB and meter.live == MB + 2 * MB
    del d
