"""AdamW's step and the gradients' norm in one C kernel each (lmforge.kernels.optim): torch.optim.AdamW's steps and
state dict, torch's norm, and torch's step wherever the kernel does not apply."""

import copy
import math
import subprocess
import sys

import pytest
import torch

from lmforge.kernels import native
from lmforge.kernels import optim as optim_module
from lmforge.kernels.cpu import has_avx2, is_x86
from lmforge.kernels.optim import AdamW, total_norm
from lmforge.training.optim import apply_step, clip_in_step

needs_kernel = pytest.mark.skipif(not native.adamw_runs(), reason="no AVX2 or no C compiler here")


def params(seed: int = 0) -> list[torch.nn.Parameter]:
    """Matrices, vectors and a scalar; one of 8197 elements: a tail past 8-wide steps and a second 8192-element
    piece."""
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((8197,), (33, 17), (5,), ())]


def groups(ps: list[torch.nn.Parameter]) -> list[dict]:
    return [{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "weight_decay": 0.0, "eps": 1e-6}]


def spy(monkeypatch) -> list:
    calls = []
    real = optim_module.adamw_step
    monkeypatch.setattr(optim_module, "adamw_step", lambda *a: calls.append(1) or real(*a))
    return calls


def run(optimizer: torch.optim.Optimizer, ps: list, steps: int, seed: int = 1, clip: float = 0.0) -> None:
    """steps steps on the same gradients whatever the optimizer, the lr changing as a schedule changes it; clipped
    through lmforge's grad_scale where clip is set."""
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g) * (3.0 if i % 2 else 0.1)
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 / (i + 1)
        if clip:
            clip_in_step(optimizer, clip)
        apply_step(optimizer)


@needs_kernel
@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_the_kernel_takes_torchs_adamw_steps(clip, monkeypatch):
    """20 steps of two groups (decay and none, their own eps), lr changing every step, clipped or not: the parameters
    and moments of torch's single-tensor AdamW (clipped by clip_grad_norm_) to fp32 rounding, and its state dict's
    layout: the same keys, shapes and dtypes."""
    calls = spy(monkeypatch)
    ours, theirs = params(), params()
    mine = AdamW(groups(ours), lr=1e-2, betas=(0.9, 0.99), fused=True)
    reference = torch.optim.AdamW(groups(theirs), lr=1e-2, betas=(0.9, 0.99), foreach=False)
    run(mine, ours, 20, clip=clip)
    g = torch.Generator().manual_seed(1)
    for i in range(20):
        for p in theirs:
            p.grad = torch.randn(p.shape, generator=g) * (3.0 if i % 2 else 0.1)
        for group in reference.param_groups:
            group["lr"] = 1e-2 / (i + 1)
        if clip:
            torch.nn.utils.clip_grad_norm_(theirs, clip)
        reference.step()
    assert len(calls) == 20
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-5, atol=2e-6)
    ours_state, theirs_state = mine.state_dict(), reference.state_dict()
    assert ours_state["state"].keys() == theirs_state["state"].keys()
    for key, state in ours_state["state"].items():
        assert {k: (v.shape, v.dtype) for k, v in state.items()} == {
            k: (v.shape, v.dtype) for k, v in theirs_state["state"][key].items()
        }
        assert state["step"].item() == 20
        torch.testing.assert_close(state["exp_avg"], theirs_state["state"][key]["exp_avg"], rtol=1e-5, atol=1e-6)


@needs_kernel
def test_a_state_dict_moves_between_this_adamw_and_torchs():
    """5 steps in one, the state dict loaded into the other, 5 more: both ways, within fp32 rounding of 10 steps of
    torch's fused AdamW alone. The kernel picks up the loaded state, not the moments it had before."""
    reference_ps = params()
    reference = torch.optim.AdamW(groups(reference_ps), lr=1e-2, fused=True)
    run(reference, reference_ps, 10)
    for first, second in ((AdamW, torch.optim.AdamW), (torch.optim.AdamW, AdamW)):
        ps = params()
        opt = first(groups(ps), lr=1e-2, fused=True)
        run(opt, ps, 5)
        saved = copy.deepcopy(opt.state_dict())
        run(opt, ps, 3, seed=7)  # moments the loaded state must replace
        ps = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        ps_at_5 = params()
        run(torch.optim.AdamW(groups(ps_at_5), lr=1e-2, fused=True), ps_at_5, 5)
        with torch.no_grad():
            for p, q in zip(ps, ps_at_5, strict=True):
                p.copy_(q)
        then = second(groups(ps), lr=1e-2, fused=True)
        then.load_state_dict(saved)
        g = torch.Generator().manual_seed(1)
        for i in range(10):  # the same gradients as the reference's steps 6 to 10
            grads = [torch.randn(p.shape, generator=g) * (3.0 if i % 2 else 0.1) for p in ps]
            if i < 5:
                continue
            for p, grad in zip(ps, grads, strict=True):
                p.grad = grad
            for group in then.param_groups:
                group["lr"] = 1e-2 / (i + 1)
            apply_step(then)
        for a, b in zip(ps, reference_ps, strict=True):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-5, atol=2e-6)


@needs_kernel
def test_the_step_is_an_in_place_update_to_autograd():
    """The kernel writes through the parameters' addresses, so it counts up their version as an in-place update
    does: a graph that saved a parameter before the step refuses to run backward after it."""
    p = torch.nn.Parameter(torch.randn(16))
    opt = AdamW([p], lr=1e-2, fused=True)
    loss = (p * p).sum()
    version = p._version
    p.grad = torch.ones(16)
    opt.step()
    assert p._version > version
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


@pytest.mark.parametrize("case", ["fp64", "amsgrad", "maximize", "tensor lr", "strided", "found_inf", "kernel off"])
def test_what_the_kernel_does_not_cover_takes_torchs_step(case, monkeypatch):
    """Each case steps exactly as torch's fused AdamW does, and the kernel is not called."""
    calls = spy(monkeypatch)
    dtype = torch.float64 if case == "fp64" else torch.float32
    options = {"amsgrad": case == "amsgrad", "maximize": case == "maximize"}
    lr = torch.tensor(1e-2) if case == "tensor lr" else 1e-2

    def make() -> list[torch.nn.Parameter]:
        g = torch.Generator().manual_seed(0)
        base = torch.randn(12, 10, generator=g, dtype=dtype)
        return [torch.nn.Parameter(base.t() if case == "strided" else base)]

    ours, theirs = make(), make()
    mine = AdamW(ours, lr=lr, fused=True, **options)
    reference = torch.optim.AdamW(theirs, lr=lr, fused=True, **options)
    if case == "kernel off":
        monkeypatch.setattr(optim_module, "adamw_runs", lambda: False)
    for i in range(3):
        grad = torch.randn(ours[0].shape, generator=torch.Generator().manual_seed(i), dtype=dtype)
        for p, opt in ((ours[0], mine), (theirs[0], reference)):
            p.grad = grad.clone()
            if case == "found_inf":
                opt.found_inf, opt.grad_scale = torch.zeros(()), torch.ones(())
        mine.step()
        reference.step()
    assert calls == []
    assert torch.equal(ours[0], theirs[0])


@needs_kernel
def test_total_norm_is_torchs_and_the_same_on_any_number_of_threads():
    """The 2-norm of every element, within fp32 rounding of get_total_norm's; exactly the same on 1 and 2 threads
    (each 8192-element piece is summed alone, and the pieces in order)."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(n, generator=g) for n in (70000, 13, 1, 8192)] + [torch.randn(40, 50, generator=g)]
    norm = total_norm(grads)
    assert norm.dtype == torch.float32 and norm.dim() == 0
    torch.testing.assert_close(norm, torch.nn.utils.get_total_norm(grads), rtol=1e-6, atol=0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.sum_squares(grads)
    finally:
        torch.set_num_threads(threads)
    torch.set_num_threads(2)
    try:
        assert native.sum_squares(grads) == one
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(total_norm([grads[0].double()]), torch.nn.utils.get_total_norm([grads[0].double()]))
    assert total_norm([torch.tensor([float("nan"), 1.0])]).isnan()
    assert total_norm([]).item() == 0.0 and total_norm([torch.zeros(0), torch.full((3,), 2.0)]).item() == pytest.approx(
        12**0.5, rel=1e-7
    )


@needs_kernel
def test_a_non_finite_norm_reaches_the_step_as_a_non_finite_scale():
    """clip_in_step's factor is (norm + 1e-6) / max_norm, at least 1: a NaN norm gives a NaN factor (the loop's
    guard skips such a step), an infinite one an infinite factor, as torch's clamp does."""
    for value, check in ((float("nan"), math.isnan), (float("inf"), math.isinf)):
        p = torch.nn.Parameter(torch.ones(4))
        opt = AdamW([p], lr=1e-3, fused=True)
        p.grad = torch.tensor([1.0, value, 0.0, 0.0])
        norm = clip_in_step(opt, 1.0)
        assert check(norm) and check(opt.grad_scale.item()) and opt.grad_scale.dtype == torch.float32


def test_zero_grad_drops_or_zeroes_the_gradients():
    ps = params()
    opt = AdamW(groups(ps), lr=1e-2, fused=True)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in ps)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


@needs_kernel
def test_a_list_the_kernels_cannot_allocate_is_an_error(monkeypatch):
    class Refusing:
        f32_adamw = f32_sum_squares = staticmethod(lambda *args: 1)

    monkeypatch.setattr(native, "_library", Refusing)
    p = torch.zeros(3)
    with pytest.raises(MemoryError, match="AdamW kernel"):
        native.adamw_step([(p, p, p, p, torch.zeros(()))], [native.AdamwGroup(1e-3, 0.0, 0.9, 0.99, 1e-8)], 1.0)
    with pytest.raises(MemoryError, match="sum of squares"):
        native.sum_squares([p])


def test_the_kernels_stay_off_when_asked_or_without_avx2(monkeypatch):
    monkeypatch.setenv("LMFORGE_NATIVE_KERNELS", "0")
    assert not native.adamw_runs.__wrapped__() and not native.sum_squares_runs.__wrapped__()
    monkeypatch.delenv("LMFORGE_NATIVE_KERNELS")
    monkeypatch.setattr(native, "has_avx2", lambda: False)
    assert not native.adamw_runs.__wrapped__() and not native.sum_squares_runs.__wrapped__()
    monkeypatch.setattr(native, "has_avx2", has_avx2)
    expected = is_x86() and has_avx2() and native.f32_transpose_runs()
    assert native.adamw_runs.__wrapped__() == native.sum_squares_runs.__wrapped__() == expected


def test_an_optimizer_that_is_never_compiled_leaves_torch_dynamo_unimported():
    """torch's optimizer methods import torch._dynamo on their first call (1.7 s); this AdamW's groups, steps, state
    dict and its loading do not, in a process of its own (the test process has imported it)."""
    script = (
        "import sys, torch\n"
        "from lmforge.kernels.optim import AdamW\n"
        "from lmforge.training.optim import apply_step, clip_in_step\n"
        "p = torch.nn.Parameter(torch.randn(10))\n"
        "opt = AdamW([{'params': [p]}], lr=1e-3, fused=True)\n"
        "opt.add_param_group({'params': [torch.nn.Parameter(torch.randn(3))]})\n"
        "p.grad = torch.randn(10)\n"
        "clip_in_step(opt, 1.0)\n"
        "apply_step(opt)\n"
        "AdamW([p], lr=1e-3, fused=True).load_state_dict({**opt.state_dict(), 'param_groups': "
        "opt.state_dict()['param_groups'][:1]})\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False"], done.stderr


@needs_kernel
def test_a_closure_runs_first_and_its_gradients_are_the_ones_stepped(monkeypatch):
    calls = spy(monkeypatch)
    ours, theirs = params(), params()
    mine = AdamW(ours, lr=1e-2, fused=True)
    reference = torch.optim.AdamW(theirs, lr=1e-2, foreach=False)
    for opt, ps in ((mine, ours), (reference, theirs)):

        def closure(ps=ps):
            loss = sum((p**2).sum() for p in ps)
            loss.backward()
            return loss

        assert opt.step(closure) is not None
    assert calls == [1]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


@needs_kernel
def test_torchs_steps_and_the_kernels_mix_and_groups_and_states_load_midway(monkeypatch):
    """A run that changes path midway: kernel steps, one of torch's (a found_inf set), a group added, a state dict
    loaded into the optimizer that took them; torch's fused AdamW given the same calls ends within fp32 rounding,
    and the step hooks ran once a step."""
    hooks = []
    ours, theirs = params(), params()
    extra_ours, extra_theirs = (torch.nn.Parameter(torch.ones(7)) for _ in range(2))
    mine = AdamW(groups(ours), lr=1e-2, fused=True)
    reference = torch.optim.AdamW(groups(theirs), lr=1e-2, fused=True)
    mine.register_step_post_hook(lambda *args: hooks.append(1))
    for opt, ps, extra in ((mine, ours, extra_ours), (reference, theirs, extra_theirs)):
        run(opt, ps, 3)
        opt.found_inf, opt.grad_scale = torch.zeros(()), torch.ones(())
        run(opt, ps, 1, seed=5)
        del opt.found_inf
        opt.add_param_group({"params": [extra], "weight_decay": 0.0})
        extra.grad = torch.full((7,), 0.5)
        run(opt, ps, 2, seed=6)
        saved = copy.deepcopy(opt.state_dict())
        run(opt, ps, 2, seed=7)  # moments the loaded state replaces
        opt.load_state_dict(saved)
        extra.grad = torch.full((7,), 0.5)
        run(opt, ps, 2, seed=8)
    assert len(hooks) == 10
    for a, b in zip([*ours, extra_ours], [*theirs, extra_theirs], strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-5, atol=2e-6)
