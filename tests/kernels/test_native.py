"""lmforge's C kernels for few-row int8 and bf16 products and for transposing copies: their sums and copies against
the naive formula and torch's, where they are used, how they are built and cached, and the machines where they stay
off."""

import shutil
import subprocess

import pytest
import torch

from lmforge.kernels import native
from lmforge.kernels.cpu import has_avx2, is_x86
from lmforge.kernels.int8 import pairs_bounded, quantize_rows
from lmforge.kernels.native import (
    SOURCE,
    add_layer_norm,
    bf16_gemv,
    bf16_gemv_runs,
    build,
    f32_transpose_runs,
    gelu_and_slope,
    gelu_runs,
    i8_gemv,
    i8_gemv_runs,
    layer_norm_backward,
    layer_norm_runs,
    softmax_cross_entropy_runs,
    transposed,
    u8_gemv,
    u8_gemv_runs,
)

compiler = shutil.which("cc") or shutil.which("gcc")
needs_kernel = pytest.mark.skipif(not u8_gemv_runs(), reason="no AVX2 or no C compiler here")


def test_the_kernel_runs_wherever_there_are_avx2_and_a_compiler():
    """u8_gemv_runs, i8_gemv_runs and bf16_gemv_runs check the kernels' sums on tiny products: false only where they
    cannot be built, never for wrong sums."""
    expected = is_x86() and has_avx2() and compiler is not None
    assert all(runs() == expected for runs in KERNELS)


@pytest.mark.parametrize("shape", [(768, 128), (2048, 384), (77, 45), (8, 8), (7, 9), (1, 300), (300, 1), (33, 65)])
def test_the_transposing_copy_is_torchs(shape, monkeypatch):
    """Shapes on and off the kernel's 8 x 8 blocks and 32 x 32 tiles, a row stride wider than the rows (a slice), and
    the inputs it leaves to torch (another dtype, strided rows, 1-D)."""
    g = torch.Generator().manual_seed(shape[0])
    x = torch.randn(shape[0], shape[1] + 3, generator=g)
    for m in (x[:, : shape[1]].contiguous(), x[:, 2:]):
        out = transposed(m)
        assert out.is_contiguous() and torch.equal(out, m.t())
    calls = []
    monkeypatch.setattr(native, "_library", lambda: calls.append(1) or pytest.fail("the kernel ran"))
    for m in (x.double(), x[:, ::2], x.t()):
        assert torch.equal(transposed(m), m.t()) and transposed(m).is_contiguous()


@needs_kernel
@pytest.mark.parametrize("d", [1, 31, 32, 45, 771, 3072])
@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_sums_are_the_exact_int32_sums(rows, d):
    """Every length around the 32-byte steps, and the largest magnitudes (127 * 127 * 3072 passes 2^24: fp32 holds
    the sum rounded as the int32's conversion rounds it)."""
    g = torch.Generator().manual_seed(d)
    x_u = torch.randint(0, 128, (rows, d), dtype=torch.uint8, generator=g)
    q = torch.randint(-127, 128, (37, d), dtype=torch.int8, generator=g)
    x_u[0], q[0], q[1] = 127, 127, -127
    assert torch.equal(u8_gemv(x_u, q), (x_u.long() @ q.long().T).float())


@needs_kernel
@pytest.mark.parametrize("d", [1, 31, 32, 45, 771, 3072])
def test_sums_of_8_bit_rows_against_bounded_pairs_are_exact(d):
    """255 against adjacent pairs at the bound, |q_2i| + |q_2i+1| = 128, in every position and sign."""
    g = torch.Generator().manual_seed(d)
    x_u = torch.randint(0, 256, (3, d), dtype=torch.uint8, generator=g)
    x_u[0] = 255
    q, _ = quantize_rows(torch.randn(37, d, generator=g), pair_bound=True)
    q[0] = torch.tensor([127, 1] * d, dtype=torch.int8)[:d]
    q[1], q[2] = -q[0], torch.tensor([64, -64] * d, dtype=torch.int8)[:d]
    assert torch.equal(u8_gemv(x_u, q), (x_u.long() @ q.long().T).float())


@needs_kernel
@pytest.mark.parametrize("d", [1, 31, 32, 45, 771, 3072])
@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_int8_activations_against_any_int8_weight_give_the_exact_int32_sums(rows, d):
    """-128 (whose magnitude only uint8 holds) against +-127 in every position, weights whose pairs are not bounded,
    every length around the 32-byte steps; the sums stay int32 (127 * 128 * 3072 passes 2^24)."""
    g = torch.Generator().manual_seed(d)
    x = torch.randint(-128, 128, (rows, d), dtype=torch.int8, generator=g)
    q = torch.randint(-127, 128, (37, d), dtype=torch.int8, generator=g)
    x[0], q[0], q[1], q[2] = -128, 127, -127, torch.tensor([127, -127] * d, dtype=torch.int8)[:d]
    assert not pairs_bounded(q) or d == 1
    out = i8_gemv(x, q)
    assert out.dtype == torch.int32 and torch.equal(out, x.int() @ q.int().T)


@needs_kernel
@pytest.mark.parametrize("d", [1, 15, 16, 45, 771, 3072])
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_bf16_products_are_exact_and_their_sums_fp32s(rows, d):
    """Each product of two bf16 values is exact in fp32; the sums are fp32's, in another order than a plain loop's:
    within fp32's rounding of the sum of |products| (the kernel's bf16 reading checked by the values, every length
    around the 16-value steps checked by the tail)."""
    g = torch.Generator().manual_seed(d)
    x = torch.randn(rows, d, generator=g).bfloat16().float()
    w = (torch.randn(37, d, generator=g) * torch.logspace(-3, 3, d)).bfloat16()
    exact = x.double() @ w.double().T
    slack = (x.double().abs() @ w.double().abs().T) * d * 2.0**-24
    out = bf16_gemv(x, w)
    assert out.dtype == torch.float32 and ((out.double() - exact).abs() <= slack).all()


def saturating(pairs_of: str):
    """A uint8 x int8 product that adds two products in int16 at a time, as AVX2's maddubs does: columns 2i and
    2i + 1 ("adjacent"), 4i with 4i + 2 and 4i + 1 with 4i + 3 ("strided"), or 2i + 1 with 2i + 2 ("shifted")."""

    def product(x_u, q):
        p = x_u.long()[:, None, :] * q.long()[None, :, :]
        p = torch.nn.functional.pad(p, (0, -p.size(-1) % 4))
        if pairs_of == "adjacent":
            two = p[..., 0::2] + p[..., 1::2]
        elif pairs_of == "strided":
            two = torch.cat([p[..., 0::4] + p[..., 2::4], p[..., 1::4] + p[..., 3::4]], -1)
        else:  # "shifted": the first column alone, then 2i + 1 with 2i + 2
            two = torch.cat([p[..., :1], p[..., 1:-1:2] + p[..., 2::2]], -1)
        return two.clamp(-(2**15), 2**15 - 1).sum(-1).float()

    return product


def test_the_exactness_check_fails_a_kernel_that_would_saturate():
    assert native.sums_exact(saturating("adjacent"))
    assert not native.sums_exact(saturating("strided"))
    assert not native.sums_exact(saturating("shifted"))
    assert not native.sums_exact(lambda x_u, q: saturating("adjacent")(x_u.clamp(max=127), q))


@needs_kernel
def test_sums_do_not_depend_on_threads_or_on_slices():
    x_u = torch.randint(0, 128, (4, 300), dtype=torch.uint8)
    q = torch.randint(-127, 128, (101, 300), dtype=torch.int8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = u8_gemv(x_u[::2], q[10:60])  # strided rows and a slice of the weight's rows
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, u8_gemv(x_u[::2].contiguous(), q[10:60].clone()))
    assert torch.equal(one, (x_u[::2].long() @ q[10:60].long().T).float())


def test_wrong_inputs_are_refused_before_the_kernel_reads_them():
    x_u, q = torch.zeros(1, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.int8)
    for a, b in [(x_u.to(torch.int8), q), (x_u, q.to(torch.uint8)), (x_u[:, :4], q), (x_u[0], q)]:
        with pytest.raises(ValueError, match="u8_gemv takes uint8"):
            u8_gemv(a, b)
    for a, b in [(x_u, q), (x_u.to(torch.int8), q.to(torch.uint8)), (x_u.to(torch.int8)[0], q)]:
        with pytest.raises(ValueError, match="i8_gemv takes int8"):
            i8_gemv(a, b)
    x, w = torch.zeros(1, 8), torch.zeros(3, 8, dtype=torch.bfloat16)
    for a, b in [(x.bfloat16(), w), (x, w.float()), (x[:, :4], w)]:
        with pytest.raises(ValueError, match="bf16_gemv takes float32"):
            bf16_gemv(a, b)


@pytest.mark.skipif(compiler is None, reason="no C compiler here")
def test_the_library_is_built_once_per_source_and_never_half_written(tmp_path, monkeypatch):
    source = tmp_path / "native.c"
    source.write_text(SOURCE.read_text())
    library = build(source, tmp_path / "cache")
    assert library.is_file() and [p.name for p in (tmp_path / "cache").iterdir()] == [library.name]
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("built again"))
    assert build(source, tmp_path / "cache") == library
    monkeypatch.undo()
    monkeypatch.setenv("CC", f"env {compiler}")  # $CC may hold a wrapper and its compiler, as "ccache gcc" does
    assert build(source, tmp_path / "cache").is_file()
    monkeypatch.delenv("CC")
    source.write_text("this is not C\n")
    with pytest.raises(subprocess.CalledProcessError):
        build(source, tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2  # the two libraries, no temporary file left


KERNELS = (
    u8_gemv_runs,
    i8_gemv_runs,
    bf16_gemv_runs,
    f32_transpose_runs,
    gelu_runs,
    layer_norm_runs,
    softmax_cross_entropy_runs,
)


def test_the_kernel_stays_off_when_asked_without_avx2_or_without_a_compiler(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "is_x86", lambda: True)
    monkeypatch.setenv("LMFORGE_NATIVE_KERNELS", "0")
    assert not any(runs.__wrapped__() for runs in KERNELS)
    monkeypatch.delenv("LMFORGE_NATIVE_KERNELS")
    monkeypatch.setattr(native, "has_avx2", lambda: False)
    assert not any(runs.__wrapped__() for runs in KERNELS)
    monkeypatch.setattr(native, "has_avx2", lambda: True)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(native, "cache_dir", lambda: tmp_path)
    native._library.cache_clear()
    try:
        assert not any(runs.__wrapped__() for runs in KERNELS)
    finally:
        native._library.cache_clear()


@pytest.mark.skipif(compiler is None or not is_x86() or not has_avx2(), reason="no AVX2 or no C compiler here")
def test_a_read_only_cache_builds_the_kernel_for_the_process_alone(monkeypatch, tmp_path):
    cache = tmp_path / "cache"  # read-only for a user (root writes anyway: refused below)

    def refusing(source, folder):
        if folder == cache:
            raise PermissionError(f"{folder} is read-only")
        return build(source, folder)

    monkeypatch.setattr(native, "cache_dir", lambda: cache)
    monkeypatch.setattr(native, "build", refusing)
    monkeypatch.setattr(native.tempfile, "mkdtemp", lambda prefix: str(tmp_path / f"{prefix}1"))
    native._library.cache_clear()
    try:
        assert u8_gemv_runs.__wrapped__() and not cache.exists()
        assert [p.suffix for p in (tmp_path / "lmforge-kernels-1").iterdir()] == [".so"]
    finally:
        native._library.cache_clear()


@needs_kernel
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 8191, 8192, 8193, 3 * 8192 + 5])
def test_gelu_and_its_slope_are_the_formulas(n, approximate):
    """Exact GELU and its tanh form, and their derivatives, against fp64's within fp32 rounding, for sizes on and off
    the kernel's 8-wide steps and 8192-element pieces; the derivative overwrites u."""
    u = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 4
    u[0] = 5.0  # where the tanh form's derivative is 1 + 2e-6, which 1 - s computed after s would round away
    exact = u.double().requires_grad_()
    a = torch.nn.functional.gelu(exact, approximate=approximate)
    (slope,) = torch.autograd.grad(a.sum(), exact)
    derivative = u.clone()
    mine = gelu_and_slope(derivative, approximate)
    torch.testing.assert_close(mine.double(), a.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(derivative.double(), slope, rtol=2e-7, atol=2e-7)
    assert not torch.equal(derivative, u)


@needs_kernel
def test_gelu_does_not_depend_on_threads_and_keeps_nans():
    u = torch.randn(5 * 8192 + 3, generator=torch.Generator().manual_seed(0)) * 3
    u[[0, 8195, -1]] = torch.tensor([float("nan"), float("-inf"), 50.0])
    results = []
    for threads in (1, 2, 3):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            derivative = u.clone()
            results.append((gelu_and_slope(derivative), derivative))
        finally:
            torch.set_num_threads(previous)
    tanh_form = u.clone()
    assert gelu_and_slope(tanh_form, "tanh")[0].isnan() and tanh_form[0].isnan()
    for a, d in results[1:]:
        torch.testing.assert_close(a, results[0][0], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(d, results[0][1], rtol=0, atol=0, equal_nan=True)
    a, d = results[0]
    assert a[0].isnan() and d[0].isnan()
    assert a[-1] == 50.0 and d[-1] == 1.0


def layer_norm_reference(a, residual, weight, bias, grad_n):
    """n = LayerNorm(a + residual) in fp64, and the gradients of (n * grad_n).sum() for a + residual, weight, bias."""
    exact = [z.double().requires_grad_() for z in (a if residual is None else a + residual, weight)]
    b = None if bias is None else bias.double().requires_grad_()
    n = torch.nn.functional.layer_norm(exact[0], exact[0].shape[-1:], exact[1], b, 1e-5)
    grads = torch.autograd.grad((n * grad_n.double()).sum(), exact + ([b] if b is not None else []))
    return n.detach(), grads


@needs_kernel
@pytest.mark.parametrize("rows, d", [(1, 8), (31, 16), (32, 128), (33, 128), (768, 128), (70, 384)])
@pytest.mark.parametrize("bias", [True, False])
def test_the_layer_norm_and_its_gradients_are_the_formulas(rows, d, bias):
    """add_layer_norm's sum, norm, mean and rstd, and layer_norm_backward's gradients (plus a residual gradient,
    written over it), against fp64 autograd, with rows on and off the 32-row pieces of the weight's sums."""
    g = torch.Generator().manual_seed(rows * d)
    a, residual, grad_n, grad_res = (torch.randn(rows, d, generator=g) * 3 + 1 for _ in range(4))
    weight = torch.randn(d, generator=g)
    b = torch.randn(d, generator=g) if bias else None
    expected, grads = layer_norm_reference(a, residual, weight, b, grad_n)

    h, n, mean, rstd = add_layer_norm(a.clone(), residual, weight, b, 1e-5)
    torch.testing.assert_close(h, a + residual, rtol=0, atol=0)
    torch.testing.assert_close(n.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean, (a + residual).mean(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rstd, ((a + residual).var(-1, unbiased=False) + 1e-5).rsqrt(), rtol=1e-5, atol=1e-5)

    around = grad_res.clone()
    grad_h, grad_w, grad_b = layer_norm_backward(grad_n, h, mean, rstd, weight, around, bias, out=around)
    assert grad_h.data_ptr() == around.data_ptr()
    torch.testing.assert_close(grad_h.double(), grads[0] + grad_res.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_w.double(), grads[1], rtol=1e-5, atol=1e-4)
    assert (grad_b is None) == (not bias)
    if bias:
        torch.testing.assert_close(grad_b.double(), grads[2], rtol=1e-5, atol=1e-4)


@needs_kernel
def test_the_layer_norm_without_a_residual_and_on_any_number_of_threads():
    """Without a residual the input stays as it is and the gradient is the norm's alone; the weight's and bias's
    gradients (sums over 1000 rows) are the same bits on 1, 2 and 3 threads."""
    g = torch.Generator().manual_seed(0)
    a, grad_n = torch.randn(1000, 64, generator=g), torch.randn(1000, 64, generator=g)
    weight, bias = torch.randn(64, generator=g), torch.randn(64, generator=g)
    expected, grads = layer_norm_reference(a, None, weight, bias, grad_n)
    kept = a.clone()
    h, n, mean, rstd = add_layer_norm(a, None, weight, bias, 1e-5)
    assert h is a and torch.equal(a, kept)
    torch.testing.assert_close(n.double(), expected, rtol=1e-5, atol=1e-5)
    results = []
    for threads in (1, 2, 3):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            results.append(layer_norm_backward(grad_n, h, mean, rstd, weight, None, True))
        finally:
            torch.set_num_threads(previous)
    torch.testing.assert_close(results[0][0].double(), grads[0], rtol=1e-5, atol=1e-5)
    for other in results[1:]:
        assert all(torch.equal(x, y) for x, y in zip(results[0], other, strict=True))


def test_memory_the_layer_norms_gradient_cannot_have_is_an_error(monkeypatch):
    class Refusing:
        f32_layer_norm_backward = staticmethod(lambda *args: 1)

    monkeypatch.setattr(native, "_library", Refusing)
    x = torch.randn(4, 8)
    with pytest.raises(MemoryError, match="layer norm"):
        layer_norm_backward(x, x, x[:, 0], x[:, 0], x[0], None, True)
