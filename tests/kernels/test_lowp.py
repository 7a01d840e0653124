"""int8 and bf16 layers against the formula computed naively, and which layers quantize_model replaces."""

import pytest
import torch
from helpers import tiny_gpt
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.kernels import apply_kernels
from lmforge.kernels.bf16 import Bf16Embedding, Bf16Linear, bf16_supported
from lmforge.kernels.int8 import (
    Int8Embedding,
    Int8Linear,
    fbgemm_runs,
    int8_product,
    int_mm_runs,
    pairs_bounded,
    quantize_activations,
    quantize_rows,
    u8_packed,
    u8_product,
    u8_product_runs,
)
from lmforge.kernels.native import bf16_gemv, bf16_gemv_runs, u8_gemv_runs
from lmforge.kernels.quantize import Quantization, quantize_model


@pytest.fixture(autouse=True)
def eight_bit_activations(monkeypatch):
    """Activations rounded to 8 bits, as on CPUs with VNNI; the 7-bit path of those without is tested on its own."""
    monkeypatch.setattr("lmforge.kernels.int8.u8_product_works", lambda: False)


def naive_int8(x, w, b, c=None, steps=255, pair_bound=True):
    """Each row of x rounded to steps + 1 levels spanning [min(x, 0), max(x, 0)], each row of w to int8 with its own
    scale (after smoothing by c, when given): its largest |w_2i| + |w_2i+1| over 127 (pair_bound), or its largest
    |w_j| over 127, the products summed in float64."""
    x, w = x.double(), w.double()
    if c is not None:
        x, w = x / c.double(), w * c.double()
    lo, hi = x.amin(1, keepdim=True).clamp(max=0), x.amax(1, keepdim=True).clamp(min=0)
    s_x = (hi - lo) / steps
    pairs = torch.stack([w[:, j].abs() + w[:, j + 1].abs() for j in range(0, w.size(1) - 1, 2)], 1).amax(1)
    top = torch.maximum(w.abs().amax(1), pairs) if pair_bound else w.abs().amax(1)
    s_w = top[:, None] / 127
    return (torch.round(x / s_x) * s_x) @ (torch.round(w / s_w) * s_w).T + b.double()


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_int8_linear_is_the_rounded_product(rows):
    torch.manual_seed(0)
    layer = nn.Linear(96, 40)
    x = torch.randn(2, rows, 96)
    y = Int8Linear.from_linear(layer)(x)
    assert y.shape == (2, rows, 40) and y.dtype == torch.float32
    expected = naive_int8(x.reshape(-1, 96), layer.weight.detach(), layer.bias.detach())
    assert torch.allclose(y.reshape(-1, 40).double(), expected, rtol=1e-5, atol=1e-5)
    exact = layer(x).detach()
    assert (y - exact).norm() / exact.norm() < 0.02  # what 8 bits cost, far from a wrong product


@pytest.mark.skipif(not u8_product_runs(), reason="no oneDNN uint8 x int8 product in this torch")
@pytest.mark.parametrize("rows", [1, 3, 300])
def test_without_vnni_activations_keep_8_bits_and_the_uint8_product_is_exact(rows, monkeypatch):
    """x86 CPUs without VNNI: oneDNN's uint8 x int8 sums, exact for 8-bit activations against weights whose adjacent
    pairs are bounded (255 x 128 per pair) and for 7-bit ones against any; the layer is the rounded product with 256
    levels per row, and a second call reuses the packed weight until the weight changes."""
    x_u = torch.randint(0, 256, (37, 300), dtype=torch.uint8)
    x_u[:3] = 255
    q, _ = quantize_rows(torch.randn(50, 300) * torch.rand(50, 300) ** 4, pair_bound=True)
    q[0, :2], q[1, 2:4] = torch.tensor([127, 1]), torch.tensor([-64, -64])  # pairs at the bound
    assert pairs_bounded(q) and torch.equal(u8_product(x_u, q).long(), x_u.long() @ q.long().T)
    x_u, q = x_u // 2, torch.randint(-127, 128, (50, 300), dtype=torch.int8)
    assert torch.equal(u8_product(x_u, q).long(), x_u.long() @ q.long().T)
    monkeypatch.setattr("lmforge.kernels.int8.u8_product_works", lambda: True)
    torch.manual_seed(0)
    layer, x = nn.Linear(96, 40), torch.randn(rows, 96)
    quantized = Int8Linear.from_linear(layer)
    y = quantized(x)
    expected = naive_int8(x, layer.weight.detach(), layer.bias.detach())
    assert torch.allclose(y.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(quantized.rows(x, slice(8, 24)), y[:, 8:24], rtol=1e-5, atol=1e-6)
    packed = u8_packed(quantized.weight)
    quantized(x)
    assert u8_packed(quantized.weight) is packed
    with torch.no_grad():
        quantized.weight.mul_(-1)  # e.g. loading other weights in place
        quantized.weight_sum.mul_(-1)
    assert torch.allclose(quantized(x) - layer.bias, -(y - layer.bias), rtol=1e-4, atol=1e-4)


def test_one_row_runs_on_fbgemm_wherever_torch_has_it():
    """fbgemm_runs checks fbgemm's sums on a tiny product: false only where fbgemm is missing, never for wrong sums."""
    import platform

    on_x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert fbgemm_runs() == (on_x86 and "fbgemm" in torch.backends.quantized.supported_engines)


@pytest.mark.skipif(not (fbgemm_runs() and u8_product_runs()), reason="no fbgemm or oneDNN uint8 product here")
def test_without_vnni_each_row_count_takes_its_kernel_with_the_same_exact_sums(monkeypatch):
    """A decoding step's rows go to lmforge's C kernel (up to GEMV_ROWS, where it is built) or fbgemm (up to
    FBGEMM_ROWS), more rows to oneDNN: all give the exact int32 sums (d = 3072 passes 2^24, where fp32 holds the sums
    rounded alike), so a layer's row is bit for bit the same alone or in a batch of any size, and a weight changed
    in place is packed again."""
    import lmforge.kernels.int8 as int8

    calls, fbgemm_packed = [], int8.fbgemm_packed
    monkeypatch.setattr(int8, "fbgemm_packed", lambda q: calls.append(1) or fbgemm_packed(q))
    for d, levels in ((300, 128), (3072, 128), (300, 256), (3072, 256)):  # 8 bits against bounded pairs
        x_u = torch.randint(0, levels, (int8.FBGEMM_ROWS + 1, d), dtype=torch.uint8)
        q = torch.randint(-127, 128, (50, d), dtype=torch.int8)
        if levels == 256:
            x_u[:, :2], q = 255, quantize_rows(torch.randn(50, d), pair_bound=True)[0]
            q[:, :2] = torch.tensor([127, 1], dtype=torch.int8)
        exact = (x_u.long() @ q.long().T).float()
        for rows in (1, int8.GEMV_ROWS, int8.GEMV_ROWS + 1, int8.FBGEMM_ROWS, int8.FBGEMM_ROWS + 1):
            calls.clear()
            assert torch.equal(u8_product(x_u[:rows], q), exact[:rows])
            on_fbgemm = (rows > int8.GEMV_ROWS or not u8_gemv_runs()) and rows <= int8.FBGEMM_ROWS
            assert len(calls) == on_fbgemm, rows
    monkeypatch.setattr(int8, "u8_product_works", lambda: True)
    torch.manual_seed(0)
    layer, x = nn.Linear(96, 40), torch.randn(int8.FBGEMM_ROWS + 1, 96) * torch.linspace(0.1, 4, 96)
    quantized = Int8Linear.from_linear(layer, x.abs().amax(0), alpha=0.7)
    assert torch.equal(torch.cat([quantized(row[None]) for row in x]), quantized(x))
    assert torch.equal(quantized(x[:4]), quantized(x)[:4])
    before = quantized(x)
    with torch.no_grad():
        quantized.weight.mul_(-1)
        quantized.weight_sum.mul_(-1)
    changed = quantized(x)  # oneDNN's pack, made again
    assert not torch.allclose(changed, before)
    for rows in (1, int8.GEMV_ROWS + 1):  # lmforge's kernel (no pack), then fbgemm's pack made again
        assert torch.equal(quantized(x[:rows]), changed[:rows])


@pytest.mark.skipif(not int_mm_runs(), reason="no CPU torch._int_mm in this torch")
def test_int8_sums_are_exact_by_either_product(monkeypatch):
    """torch._int_mm where the CPU has VNNI, fp32 sums where its _int_mm is a plain loop: the same int32 sums."""
    x_q = torch.randint(-128, 128, (37, 300), dtype=torch.int8)
    q = torch.randint(-127, 128, (50, 300), dtype=torch.int8)
    exact = x_q.long() @ q.long().T
    for fast in (True, False):
        monkeypatch.setattr("lmforge.kernels.int8.int_mm_works", lambda fast=fast: fast)
        assert torch.equal(int8_product(x_q, q).long(), exact)


@pytest.mark.skipif(not (int_mm_runs() and fbgemm_runs()), reason="no CPU torch._int_mm or fbgemm here")
def test_with_vnni_each_row_count_takes_its_kernel_with_the_same_exact_sums(monkeypatch):
    """A decoding step's rows go to lmforge's C kernel (up to GEMV_ROWS, a weight without -128), to fbgemm (up to
    FBGEMM_ROWS, a weight whose pairs are bounded), more rows to torch._int_mm: all give the exact int32 sums, so a
    layer's row is bit for bit the same alone or in a batch of any size."""
    import lmforge.kernels.int8 as int8

    monkeypatch.setattr(int8, "int_mm_works", lambda: True)
    calls = []
    for name in ("i8_gemv", "_fbgemm_sums"):
        kernel = getattr(int8, name)
        monkeypatch.setattr(int8, name, lambda *a, kernel=kernel, name=name: calls.append(name) or kernel(*a))
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda *a: calls.append("_int_mm") or int_mm(*a))
    x_q = torch.randint(-128, 128, (int8.FBGEMM_ROWS + 1, 3072), dtype=torch.int8)
    x_q[:, 0] = -128
    bounded = quantize_rows(torch.randn(50, 3072), pair_bound=True)[0]
    unbounded = torch.randint(-127, 128, (50, 3072), dtype=torch.int8)
    with_128 = bounded.clone()
    with_128[0, 0] = -128
    for q, small, few in ((bounded, "i8_gemv", "_fbgemm_sums"), (unbounded, "i8_gemv", "_int_mm"),
                          (with_128, "_fbgemm_sums", "_fbgemm_sums")):  # fmt: skip
        exact = x_q.long() @ q.long().T
        for rows in (1, int8.GEMV_ROWS, int8.GEMV_ROWS + 1, int8.FBGEMM_ROWS, int8.FBGEMM_ROWS + 1):
            calls.clear()
            assert torch.equal(int8_product(x_q[:rows], q).long(), exact[:rows])
            kernel = small if rows <= int8.GEMV_ROWS else few if rows <= int8.FBGEMM_ROWS else "_int_mm"
            assert calls == [kernel] or not u8_gemv_runs(), (rows, calls)


@pytest.mark.parametrize(
    "machine, flags, expected",
    [("x86_64", "fpu avx2 avx512f avx512_vnni", True), ("x86_64", "fpu avx avx2 fma", False),
     ("x86_64", "avx2 avx_vnni", True), ("aarch64", "", True)],
)  # fmt: skip
def test_int_mm_is_used_only_where_it_is_fast(monkeypatch, machine, flags, expected):
    """An x86 CPU without VNNI runs torch._int_mm as a plain loop, 50x slower than fp32: int8 sums in fp32 there."""
    import lmforge.kernels.cpu as cpu
    import lmforge.kernels.int8 as int8

    monkeypatch.setattr(cpu, "cpuinfo", lambda field: flags if field == "flags" else "")
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    monkeypatch.setattr(int8, "int_mm_runs", lambda: True)
    assert int8.int_mm_works.__wrapped__() is expected


def test_activations_round_to_256_levels_over_their_own_range():
    x = torch.randn(7, 33) * torch.logspace(-3, 3, 7)[:, None]
    x[3] = 0  # an all-zero row keeps a finite scale
    x[4] = x[4].abs()  # one-signed: every level lands on [0, max]
    q, scale, offset = quantize_activations(x.clone())
    assert q.dtype == torch.int8 and torch.isfinite(scale).all() and (scale > 0).all()
    assert (x - scale * (q.float() + offset)).abs().max(1).values.le(scale.squeeze(1) * 0.5001).all()
    # a one-signed row's 256 levels all lie on [0, max]: a step half a symmetric grid's
    assert scale[4] == pytest.approx(x[4].max().item() / 255) and q[4].max() == 127 and offset[4] == 128


def test_smoothing_leaves_the_product_and_moves_range_into_the_weights():
    torch.manual_seed(0)
    layer = nn.Linear(64, 16)
    x = torch.randn(5, 64)
    x[:, 3] *= 50  # an outlier channel that sets every channel's rounding step
    input_max = x.abs().amax(0)
    smoothed = Int8Linear.from_linear(layer, input_max, alpha=0.5)
    c = input_max**0.5 / layer.weight.detach().abs().amax(0) ** 0.5
    assert torch.allclose(smoothed.input_scale, c, rtol=1e-5)
    expected = naive_int8(x, layer.weight.detach(), layer.bias.detach(), c)
    assert torch.allclose(smoothed(x).double(), expected, rtol=1e-4, atol=1e-4)
    exact = layer(x).detach()
    error = lambda q: ((q(x) - exact).norm() / exact.norm()).item()  # noqa: E731
    assert error(smoothed) < error(Int8Linear.from_linear(layer))


def test_int8_layer_without_bias_and_on_empty_input():
    layer = nn.Linear(16, 8, bias=False)
    q = Int8Linear.from_linear(layer)
    assert q.bias is None and q(torch.randn(0, 16)).shape == (0, 8)
    x = torch.randn(4, 16)
    assert torch.allclose(q(x).double(), naive_int8(x, layer.weight.detach(), torch.zeros(8)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 5])
def test_bf16_linear_is_the_bf16_product_accumulated_in_fp32(rows):
    torch.manual_seed(0)
    layer = nn.Linear(64, 24)
    x = torch.randn(rows, 64)
    y = Bf16Linear.from_linear(layer)(x)
    products = x.bfloat16().double() @ layer.weight.detach().bfloat16().double().T
    expected = products + layer.bias.detach().double()
    # the product is rounded to bf16 once (8 bits: 2^-8 of its size) before the fp32 bias is added
    assert torch.allclose(y.double(), expected, rtol=0, atol=float(products.abs().max()) * 2**-8 + 1e-6)
    assert Bf16Linear.from_linear(layer).state_dict()["weight"].dtype == torch.bfloat16


@pytest.mark.skipif(not bf16_gemv_runs(), reason="no AVX2 or no C compiler here")
@pytest.mark.parametrize("native", [True, False])
def test_a_bf16_decoding_row_takes_lmforge_kernel_and_agrees_with_the_batch(native, monkeypatch):
    """One row (a decoding step) goes to lmforge's C kernel, with or without native bf16, and gives the bf16 product
    in fp32 (unrounded: oneDNN's batch product comes back in bf16)."""
    import lmforge.kernels.bf16 as bf16

    calls = []
    monkeypatch.setattr(bf16, "bf16_gemv", lambda *a: calls.append(1) or bf16_gemv(*a))
    monkeypatch.setattr(bf16, "bf16_supported", lambda: native and bf16_supported())
    torch.manual_seed(0)
    layer, x = nn.Linear(96, 40), torch.randn(4, 96)
    q = Bf16Linear.from_linear(layer)
    one, batch = torch.cat([q(row[None]) for row in x]), q(x)
    assert len(calls) == 4
    exact = x.bfloat16().double() @ layer.weight.detach().bfloat16().double().T + layer.bias.detach().double()
    assert torch.allclose(one.double(), exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one, batch, rtol=1e-2, atol=1e-2)


def test_bf16_without_native_support_multiplies_in_fp32(monkeypatch):
    layer = nn.Linear(32, 8)
    q = Bf16Linear.from_linear(layer)
    monkeypatch.setattr("lmforge.kernels.bf16.bf16_supported", lambda: False)
    x = torch.randn(3, 32)
    expected = x @ layer.weight.detach().bfloat16().float().T + layer.bias.detach()
    assert torch.allclose(q(x), expected, atol=1e-5)


def test_embeddings_round_rows():
    table = nn.Embedding(50, 12)
    ids = torch.tensor([[0, 7, 49]])
    q, s = quantize_rows(table.weight.detach())
    assert torch.allclose(Int8Embedding.from_embedding(table)(ids), (q * s[:, None])[ids])
    assert torch.equal(Bf16Embedding.from_embedding(table)(ids), table.weight.detach().bfloat16().float()[ids])


def test_quantize_model_replaces_linears_but_keeps_a_tied_head_and_named_layers():
    model = apply_kernels(tiny_gpt(d_model=32))
    quantize_model(model, Quantization("int8", keep_fp32=["blocks.0.ffn.*"]))
    names = {name: type(m).__name__ for name, m in model.named_modules()}
    assert names["decoder.blocks.1.attn.qkv"] == "Int8Linear"
    assert names["decoder.blocks.0.attn.qkv"] == "Int8Linear"
    assert names["decoder.blocks.0.ffn.up"] == "Linear"  # kept by the glob
    assert names["lm_head"] == "Linear" and model.lm_head.weight is model.tok_emb.weight  # tied: stays fp32
    assert names["tok_emb"] == "Embedding"  # embeddings only when asked
    with pytest.raises(LmforgeError, match="already quantized"):
        quantize_model(model, Quantization("int8"))


def test_quantize_model_embeddings_and_untied_head():
    model = tiny_gpt(d_model=32, tie_embeddings=False)
    quantize_model(model, Quantization("bf16", embeddings=True))
    assert isinstance(model.lm_head, Bf16Linear) and isinstance(model.tok_emb, Bf16Embedding)
    assert isinstance(model.pos_emb, nn.Module)


def test_quantized_model_stays_close_to_fp32():
    model = tiny_gpt(gpt2_init=True, d_model=64, n_head=4)
    idx = torch.randint(0, 23, (2, 16))
    with torch.no_grad():
        exact = model(idx)
        for dtype, tolerance in (("int8", 0.05), ("bf16", 0.02)):
            q = quantize_model(tiny_gpt(gpt2_init=True, d_model=64, n_head=4), Quantization(dtype))
            assert (q(idx) - exact).norm() / exact.norm() < tolerance


def test_nothing_to_quantize_is_refused():
    with pytest.raises(LmforgeError, match="no linear layers to quantize"):
        quantize_model(nn.Sequential(nn.LayerNorm(4)), Quantization("int8"))
    with pytest.raises(LmforgeError, match="outside --keep-fp32"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), Quantization("int8", keep_fp32=["0"]))


def test_bf16_support_is_detected_without_error():
    assert isinstance(bf16_supported(), bool)


@pytest.mark.parametrize("cls", [Int8Linear, Bf16Linear])
def test_rows_are_the_layers_outputs_in_that_range(cls):
    """Cross-attention reads q, and k and v, from one fused layer: rows(x, s) must equal forward(x)[..., s]."""
    torch.manual_seed(0)
    layer = cls.from_linear(nn.Linear(32, 96))
    x = torch.randn(2, 5, 32)
    full = layer(x)
    for rows in (slice(0, 32), slice(32, None)):
        torch.testing.assert_close(
            layer.rows(x, rows),
            full[..., rows],
            rtol=1e-2 if cls is Bf16Linear else 0,
            atol=1e-2 if cls is Bf16Linear else 1e-6,
        )


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_an_encoder_decoder_quantizes_cross_attention_included(dtype):
    from lmforge.config import T5Config
    from lmforge.models.t5 import T5

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, n_layer=2, n_head=4, dropout=0.0)
    model = T5(cfg).eval()
    src, tgt = torch.randint(2, 50, (2, 7)), torch.randint(2, 50, (2, 5))
    with torch.no_grad():
        exact = model.decode(tgt, model.encode(src))
        quantize_model(model, Quantization(dtype))
        assert isinstance(model.decoder.blocks[0].cross.qkv, Int8Linear | Bf16Linear)
        rounded = model.decode(tgt, model.encode(src))
    assert (rounded - exact).norm() / exact.norm() < 0.05


def test_weights_round_with_their_adjacent_pairs_bounded():
    """|q_2i| + |q_2i+1| <= 128 on every row, even where two neighbours are both the row's largest values, and the
    step is the largest pair sum over 127: at most one step's half lost per value."""
    torch.manual_seed(0)
    w = torch.randn(64, 97)
    w[0, :2] = 5.0  # two neighbours at the top
    w[1, 96] = 9.0  # an odd last column, with no neighbour
    w[2] = 0
    q, scale = quantize_rows(w, pair_bound=True)
    a = q.abs().int()
    assert (a[:, 0:96:2] + a[:, 1:96:2]).max() <= 128 and pairs_bounded(q)
    assert q[0, 0] == 64 and q[1, 96] == 127 and torch.isfinite(scale).all()
    assert (w - q * scale[:, None]).abs().le(scale[:, None] * 0.5001).all()
    plain, plain_scale = quantize_rows(w)
    assert not pairs_bounded(plain) and (scale >= plain_scale).all()


@pytest.mark.skipif(not u8_product_runs(), reason="no oneDNN uint8 x int8 product in this torch")
def test_a_checkpoint_with_unbounded_pairs_keeps_7_bit_activations_without_vnni(monkeypatch):
    """Weights rounded before pairs were bounded (their largest |w_j| over 127) still give the exact sums on a CPU
    without VNNI: their activations are rounded to 128 levels there."""
    monkeypatch.setattr("lmforge.kernels.int8.u8_product_works", lambda: True)
    torch.manual_seed(0)
    layer, x = nn.Linear(96, 40), torch.randn(5, 96)
    old = Int8Linear.from_linear(layer).state_dict()
    old["weight"], old["weight_scale"] = quantize_rows(layer.weight.detach())
    old["weight_sum"] = old["weight"].sum(1, dtype=torch.int32).float()
    loaded = Int8Linear(96, 40)
    loaded.load_state_dict(old)
    assert loaded.u8_steps == 127 and "7-bit" in repr(loaded)
    expected = naive_int8(x, layer.weight.detach(), layer.bias.detach(), steps=127, pair_bound=False)
    assert torch.allclose(loaded(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert Int8Linear.from_linear(layer).u8_steps == 255
