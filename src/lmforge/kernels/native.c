/* lmforge's C kernels for x86 CPUs with AVX2, built by lmforge.kernels.native.

   The few rows of a decoding step, each weight row streamed once, 32 bytes at a time. int8: exact int32 sums of int8
   weights times uint8 activations where the CPU lacks VNNI, int8 ones where it has it (whose own int8 product,
   oneDNN's torch._int_mm, reads a weight for one row at a fifth of the bandwidth). fbgemm's kernel, blocked for many
   rows, streams a weight at 13-17 GB/s for one row on a 2-core Zen 3; these loops do at 22-28 GB/s there and 28-32
   GB/s on a 2-core Zen 4 (four rows at a time were half as fast: more streams than the prefetchers follow). bf16: the
   weights' values as fp32 against fp32 activations.

   A transposing copy of an fp32 matrix, for the operands of a training step's oneDNN products that oneDNN would
   otherwise have torch copy (3-5x faster than torch's copy: 8 x 8 blocks transposed in registers).

   Causal self-attention for training's heads (up to a few hundred positions of 32-64 columns), rotary positions
   included: one (row, head) at a time, its keys and values in cache, two queries at a time against each key read,
   reading the fused projection and writing the heads side by side, where torch's flash attention, the rotations and
   the copies between them cost 3x as much on char-small's heads. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline int32_t sum8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* 32 columns' products added to acc. Unsigned x: maddubs adds the products of columns 2t and 2t + 1 in int16, which
   stays exact where x keeps 7 bits (2 * 127 * 127 < 2^15) or q's adjacent pairs are bounded,
   |q[j, 2t]| + |q[j, 2t + 1]| <= 128 (255 * 128 < 2^15). Signed x: maddubs multiplies |x| by q with x's sign, and
   |x| <= 128 against |q| <= 127 keeps each pair's sum within int16 (2 * 128 * 127 < 2^15): exact for every weight. */
static inline __m256i dot32(__m256i acc, __m256i a, __m256i b, int is_signed) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (is_signed) {
        b = _mm256_sign_epi8(b, a);
        a = _mm256_abs_epi8(a);
    }
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
}

/* sum_t x[t] q[t] over k columns */
static inline int32_t dot_int8(const int8_t *x, const int8_t *q, int64_t k, int is_signed) {
    const int64_t k32 = k & ~(int64_t)31;
    __m256i acc = _mm256_setzero_si256();
    for (int64_t t = 0; t < k32; t += 32)
        acc = dot32(acc, _mm256_loadu_si256((const __m256i *)(x + t)), _mm256_loadu_si256((const __m256i *)(q + t)),
                    is_signed);
    int32_t s = sum8(acc);
    for (int64_t t = k32; t < k; t++) s += (is_signed ? (int32_t)x[t] : (int32_t)(uint8_t)x[t]) * q[t];
    return s;
}

/* Each kernel: out[i, j] = sum_t x[i, t] q[j, t], x (m, k) and q (n, k) row-major, each weight row read once. */

/* uint8 x (CPUs without VNNI), the sums in fp32 */
void u8_gemv(const uint8_t *x, const int8_t *q, float *out, int64_t m, int64_t n, int64_t k, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < m; i++) out[i * n + j] = (float)dot_int8((const int8_t *)x + i * k, q + j * k, k, 0);
}

/* int8 x, q in [-127, 127], the sums in int32 */
void i8_gemv(const int8_t *x, const int8_t *q, int32_t *out, int64_t m, int64_t n, int64_t k, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < m; i++) out[i * n + j] = dot_int8(x + i * k, q + j * k, k, 1);
}

/* 16 bf16 values (a bf16 is an fp32's upper half) as two vectors of 8 fp32 */
static inline void bf16x16(const uint16_t *p, __m256 *lo, __m256 *hi) {
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    *lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)), 16));
    *hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)), 16));
}

static inline float bf16_value(uint16_t b) {
    union { uint32_t u; float f; } v = {(uint32_t)b << 16};
    return v.f;
}

/* sum_t x[t] w[t] over k columns, x fp32 and w bf16 */
static inline float dot_bf16(const float *x, const uint16_t *w, int64_t k) {
    const int64_t k16 = k & ~(int64_t)15;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), w0, w1;
    for (int64_t t = 0; t < k16; t += 16) {
        bf16x16(w + t, &w0, &w1);
        acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(_mm256_loadu_ps(x + t), w0));
        acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(_mm256_loadu_ps(x + t + 8), w1));
    }
    __m256 acc = _mm256_add_ps(acc0, acc1);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    float sum = _mm_cvtss_f32(s);
    for (int64_t t = k16; t < k; t++) sum += x[t] * bf16_value(w[t]);
    return sum;
}

/* x fp32 (bf16 values, rounded by the caller) and w bf16, the sums in fp32: each product of two bf16 values is exact
   in fp32, the sums are fp32's. oneDNN's packed bf16 product reads a weight for one row at 15.7 GB/s on a 2-core
   Zen 4. */
void bf16_gemv(const float *x, const uint16_t *w, float *out, int64_t m, int64_t n, int64_t k, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < m; i++) out[i * n + j] = dot_bf16(x + i * k, w + j * k, k);
}

/* d (8 x 8, rows ld apart) = s (8 x 8, rows ls apart) transposed, in registers */
static inline void transpose8x8(const float *s, int64_t ls, float *d, int64_t ld) {
    __m256 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(s + i * ls);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(d + i * ld, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(d + (i + 4) * ld, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
    }
}

/* dst (cols x rows, contiguous) = src (rows x cols, rows ls apart)^T, in 32 x 32 tiles that stay in cache */
void f32_transpose(const float *src, float *dst, int64_t rows, int64_t cols, int64_t ls, int threads) {
    const int64_t tile = 32, tiles_r = (rows + tile - 1) / tile, tiles_c = (cols + tile - 1) / tile;
#pragma omp parallel for num_threads(threads) schedule(static) collapse(2)
    for (int64_t bi = 0; bi < tiles_r; bi++)
        for (int64_t bj = 0; bj < tiles_c; bj++) {
            int64_t i0 = bi * tile, j0 = bj * tile;
            int64_t i1 = i0 + tile < rows ? i0 + tile : rows, j1 = j0 + tile < cols ? j0 + tile : cols, i = i0;
            for (; i + 8 <= i1; i += 8) {
                int64_t j = j0;
                for (; j + 8 <= j1; j += 8) transpose8x8(src + i * ls + j, ls, dst + j * rows + i, rows);
                for (; j < j1; j++)
                    for (int64_t r = i; r < i + 8; r++) dst[j * rows + r] = src[r * ls + j];
            }
            for (; i < i1; i++)
                for (int64_t j = j0; j < j1; j++) dst[j * rows + i] = src[i * ls + j];
        }
}

#define FMA __attribute__((target("avx2,fma")))

/* e^x for x <= 88, as Cephes' expf (2^n e^r, r within ln2 / 2, a degree-6 polynomial: about 2 ulp); below -87.3
   (where e^x leaves fp32's normal range) it gives e^-87.3, about 1e-38, and a NaN stays NaN. Above 88 the result is
   meaningless: attention overwrites those lanes (keys past a query's own position) with zeros, GELU's tanh form holds
   its argument under 88. */
static FMA inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x); /* maxps answers its second operand where one is NaN */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* out = x rotated as lmforge.nn.positions.RotaryEmbedding does: x * cos2 + (x's halves swapped) * sin2, or x itself
   without tables; times scale. The sines of the swapped halves come from s_lo (for the first half's columns) and
   s_hi (the second's): sin2 and sin2 + d / 2 rotate, the reverse undoes it (the gradient: dx[c] = dy[c] cos2[c] +
   dy[c'] sin2[c'], c' the other half's column). Eight columns at a time where the halves are a multiple of 8 wide. */
static FMA inline void rotate(const float *x, const float *cos2, const float *s_lo, const float *s_hi, float *out,
                              int64_t d, float scale) {
    const int64_t h = d / 2;
    const __m256 s = _mm256_set1_ps(scale);
    if (!cos2) {
        for (int64_t c = 0; c < d; c += 8) _mm256_storeu_ps(out + c, _mm256_mul_ps(_mm256_loadu_ps(x + c), s));
    } else if (h % 8 == 0) {
        for (int64_t c = 0; c < h; c += 8) {
            const __m256 lo = _mm256_loadu_ps(x + c), hi = _mm256_loadu_ps(x + c + h);
            const __m256 a = _mm256_fmadd_ps(lo, _mm256_loadu_ps(cos2 + c), _mm256_mul_ps(hi, _mm256_loadu_ps(s_lo + c)));
            const __m256 b = _mm256_fmadd_ps(hi, _mm256_loadu_ps(cos2 + c + h), _mm256_mul_ps(lo, _mm256_loadu_ps(s_hi + c)));
            _mm256_storeu_ps(out + c, _mm256_mul_ps(a, s)), _mm256_storeu_ps(out + c + h, _mm256_mul_ps(b, s));
        }
    } else {
        for (int64_t c = 0; c < h; c++) {
            out[c] = (x[c] * cos2[c] + x[c + h] * s_lo[c]) * scale;
            out[c + h] = (x[c + h] * cos2[c + h] + x[c] * s_hi[c]) * scale;
        }
    }
}

/* x's lanes summed */
static FMA inline float hsum(__m256 x) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

/* the largest of s[0, n), n >= 1, NaNs passed over (the exponentials keep them) */
static FMA inline float row_max(const float *s, int64_t n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) m = _mm256_max_ps(_mm256_loadu_ps(s + j), m); /* a NaN load answers m */
    float lanes[8], best = -INFINITY;
    _mm256_storeu_ps(lanes, m);
    for (int k = 0; k < 8; k++) best = lanes[k] > best ? lanes[k] : best;
    for (; j < n; j++) best = s[j] > best ? s[j] : best;
    return best;
}

/* the dot product of d floats, d a multiple of 8 */
static FMA inline float dot(const float *a, const float *b, int64_t d) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < d; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc);
    return hsum(acc);
}

/* o1, o2 [0, d) = the sums over j < n of p1[j], p2[j] times row j of v (rows ld apart; d a multiple of 8), 32 columns
   at a time in registers, each row of v read once for both: two queries' scores against the keys' columns, or the
   values weighted by two rows of probabilities. The empty asm statements keep each row's vectors in registers:
   otherwise GCC folds every load into both FMAs that use it, ten loads for eight FMAs where six do (a 2-core Zen 4:
   char-small's attention forward about 10% faster, its backward about 5%, the same bits) */
static FMA inline void combine2(const float *p1, const float *p2, const float *v, int64_t n, int64_t ld, int64_t d,
                                float *o1, float *o2) {
    int64_t c = 0;
    for (; c + 32 <= d; c += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int64_t j = 0; j < n; j++) {
            const __m256 x = _mm256_broadcast_ss(p1 + j), z = _mm256_broadcast_ss(p2 + j);
            const float *r = v + j * ld + c;
            __m256 r0 = _mm256_loadu_ps(r), r1 = _mm256_loadu_ps(r + 8), r2 = _mm256_loadu_ps(r + 16);
            __m256 r3 = _mm256_loadu_ps(r + 24);
            __asm__("" : "+x"(r0), "+x"(r1), "+x"(r2), "+x"(r3));
            a0 = _mm256_fmadd_ps(x, r0, a0), a1 = _mm256_fmadd_ps(x, r1, a1);
            a2 = _mm256_fmadd_ps(x, r2, a2), a3 = _mm256_fmadd_ps(x, r3, a3);
            b0 = _mm256_fmadd_ps(z, r0, b0), b1 = _mm256_fmadd_ps(z, r1, b1);
            b2 = _mm256_fmadd_ps(z, r2, b2), b3 = _mm256_fmadd_ps(z, r3, b3);
        }
        _mm256_storeu_ps(o1 + c, a0), _mm256_storeu_ps(o1 + c + 8, a1);
        _mm256_storeu_ps(o1 + c + 16, a2), _mm256_storeu_ps(o1 + c + 24, a3);
        _mm256_storeu_ps(o2 + c, b0), _mm256_storeu_ps(o2 + c + 8, b1);
        _mm256_storeu_ps(o2 + c + 16, b2), _mm256_storeu_ps(o2 + c + 24, b3);
    }
    for (; c < d; c += 8) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
        int64_t j = 0;
        for (; j + 2 <= n; j += 2) {
            __m256 r0 = _mm256_loadu_ps(v + j * ld + c), r1 = _mm256_loadu_ps(v + (j + 1) * ld + c);
            __asm__("" : "+x"(r0), "+x"(r1));
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + j), r0, a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + j + 1), r1, a1);
            b0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p2 + j), r0, b0);
            b1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p2 + j + 1), r1, b1);
        }
        if (j < n) {
            const __m256 r0 = _mm256_loadu_ps(v + j * ld + c);
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + j), r0, a0);
            b0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p2 + j), r0, b0);
        }
        _mm256_storeu_ps(o1 + c, _mm256_add_ps(a0, a1));
        _mm256_storeu_ps(o2 + c, _mm256_add_ps(b0, b1));
    }
}

/* y += a x over d floats */
static FMA inline void axpy(float a, const float *x, float *y, int64_t d) {
    for (int64_t c = 0; c < d; c++) y[c] += a * x[c];
}

/* y[j] += a1[j] x1 + a2[j] x2 for j < n (rows of d floats, d a multiple of 8), 32 columns of x1 and x2 at a time held
   in registers */
static FMA inline void outer2(const float *a1, const float *a2, const float *x1, const float *x2, float *y, int64_t n,
                              int64_t d) {
    int64_t c = 0;
    for (; c + 32 <= d; c += 32) {
        __m256 u[4], z[4];
        for (int k = 0; k < 4; k++) u[k] = _mm256_loadu_ps(x1 + c + 8 * k), z[k] = _mm256_loadu_ps(x2 + c + 8 * k);
        for (int64_t j = 0; j < n; j++) {
            const __m256 p = _mm256_broadcast_ss(a1 + j), q = _mm256_broadcast_ss(a2 + j);
            float *yj = y + j * d + c;
            for (int k = 0; k < 4; k++)
                _mm256_storeu_ps(yj + 8 * k, _mm256_fmadd_ps(q, z[k], _mm256_fmadd_ps(p, u[k], _mm256_loadu_ps(yj + 8 * k))));
        }
    }
    for (; c < d; c += 8) {
        const __m256 u = _mm256_loadu_ps(x1 + c), z = _mm256_loadu_ps(x2 + c);
        for (int64_t j = 0; j < n; j++) {
            float *yj = y + j * d + c;
            const __m256 acc = _mm256_fmadd_ps(_mm256_broadcast_ss(a1 + j), u, _mm256_loadu_ps(yj));
            _mm256_storeu_ps(yj, _mm256_fmadd_ps(_mm256_broadcast_ss(a2 + j), z, acc));
        }
    }
}

/* s[0, n) -> e^(s - shift), zero on [n, np); returns their sum */
static FMA inline float exps(float *s, int64_t n, int64_t np, float shift) {
    __m256 sum = _mm256_setzero_ps(), m = _mm256_set1_ps(shift);
    for (int64_t j = 0; j < np; j += 8) _mm256_storeu_ps(s + j, exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), m)));
    for (int64_t j = n; j < np; j++) s[j] = 0.0f;
    for (int64_t j = 0; j < np; j += 8) sum = _mm256_add_ps(sum, _mm256_loadu_ps(s + j));
    return hsum(sum);
}

/* m (d columns, rows ls apart) as columns: mt (d rows of tp) [.., i] = row i of m, for i < t; 8 x 8 blocks in
   registers */
static FMA void columns(const float *m, int64_t ls, int64_t t, int64_t d, int64_t tp, float *mt) {
    int64_t i = 0;
    for (; i + 8 <= t; i += 8)
        for (int64_t e = 0; e < d; e += 8) transpose8x8(m + i * ls + e, ls, mt + e * tp + i, tp);
    for (; i < t; i++)
        for (int64_t e = 0; e < d; e++) mt[e * tp + i] = m[i * ls + e];
}

/* One head of qkv (rows 3 w apart) into cache: the queries rotated and times scale (q), the keys rotated as rows (k)
   and as columns (kt: d rows of tp), and the values as columns (vt) where given (the forward reads them as rows in
   place) */
static FMA void load_head(const float *base, const float *cos2, const float *sin2, int64_t t, int64_t w, int64_t d,
                          int64_t tp, float scale, float *q, float *k, float *kt, float *vt) {
    for (int64_t i = 0; i < t; i++) {
        const float *x = base + i * 3 * w, *c = cos2 ? cos2 + i * d : 0, *sn = sin2 ? sin2 + i * d : 0;
        const float *sh = sin2 ? sn + d / 2 : 0;
        rotate(x, c, sn, sh, q + i * d, d, scale);
        rotate(x + w, c, sn, sh, k + i * d, d, 1.0f);
    }
    columns(k, d, t, d, tp, kt);
    if (vt) columns(base + 2 * w, 3 * w, t, d, tp, vt);
}

/* Causal self-attention of one fused projection qkv (b, t, 3 * heads * d: every query, then key, then value head),
   rotary positions applied to queries and keys where cos2 and sin2 (t, d) are given: y (b, t, heads * d) and the
   log-sum-exp of each query's scores, lse (b, heads, t). One (row, head) per task: its queries and keys in cache, its
   values read where they are. Returns 1, having written nothing, where its scratch memory cannot be had. */
int f32_causal_attention(const float *qkv, const float *cos2, const float *sin2, float *y, float *lse, int64_t b,
                         int64_t t, int64_t heads, int64_t d, float scale, int threads) {
    const int64_t tp = (t + 7) & ~(int64_t)7, w = heads * d, per = 2 * t * d + d * tp + 2 * tp + 2 * d;
    float *scratch = malloc(sizeof(float) * per * threads);
    if (!scratch) return 1;
#pragma omp parallel num_threads(threads)
    {
        float *q = scratch + omp_get_thread_num() * per;
        float *k = q + t * d, *kt = k + t * d, *s = kt + d * tp, *o = s + 2 * tp;
        memset(kt, 0, sizeof(float) * d * tp);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < b * heads; task++) {
            const int64_t row = task / heads, head = task % heads;
            const float *base = qkv + row * t * 3 * w + head * d, *v = base + 2 * w; /* values: rows 3 w apart */
            load_head(base, cos2, sin2, t, w, d, tp, scale, q, k, kt, 0);
            for (int64_t i = 0; i < t; i += 2) {  /* two queries at a time: rows i and i + 1 (i again at an odd end) */
                const int64_t rows[2] = {i, i + 1 < t ? i + 1 : i}, np = (rows[1] + 8) & ~(int64_t)7;
                combine2(q + rows[0] * d, q + rows[1] * d, kt, d, tp, np, s, s + tp);
                float sums[2], maxima[2];
                for (int r = 0; r < 2; r++) {
                    const float m = row_max(s + r * tp, rows[r] + 1);
                    maxima[r] = m, sums[r] = exps(s + r * tp, rows[r] + 1, np, m);
                }
                /* the keys both queries see, then the second's own: nothing past a query reaches its output, not
                   even a NaN times a zero probability */
                combine2(s, s + tp, v, rows[0] + 1, 3 * w, d, o, o + d);
                if (rows[1] != rows[0]) axpy(s[tp + rows[1]], v + rows[1] * 3 * w, o + d, d);
                for (int r = 0; r < 2; r++) {
                    float *out = y + (row * t + rows[r]) * w + head * d;
                    const float inv = 1.0f / sums[r];
                    for (int64_t e = 0; e < d; e++) out[e] = o[r * d + e] * inv;
                    lse[task * t + rows[r]] = maxima[r] + logf(sums[r]);
                }
            }
        }
    }
    free(scratch);
    return 0;
}

/* The gradient of f32_causal_attention: dqkv (b, t, 3 * heads * d) from dy (b, t, heads * d), recomputing each row's
   probabilities from qkv and lse (flash attention's backward, one (row, head) at a time). Returns 1 as the forward
   does. */
int f32_causal_attention_backward(const float *qkv, const float *cos2, const float *sin2, const float *y,
                                  const float *dy, const float *lse, float *dqkv, int64_t b, int64_t t, int64_t heads,
                                  int64_t d, float scale, int threads) {
    const int64_t tp = (t + 7) & ~(int64_t)7, w = heads * d, per = 5 * t * d + 2 * d * tp + 4 * tp;
    float *scratch = malloc(sizeof(float) * per * threads);
    if (!scratch) return 1;
#pragma omp parallel num_threads(threads)
    {
        float *q = scratch + omp_get_thread_num() * per;
        float *k = q + t * d, *kt = k + t * d, *vt = kt + d * tp, *dq = vt + d * tp, *dk = dq + t * d;
        float *dv = dk + t * d, *p = dv + t * d, *ds = p + 2 * tp;
        memset(kt, 0, sizeof(float) * 2 * d * tp);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < b * heads; task++) {
            const int64_t row = task / heads, head = task % heads;
            load_head(qkv + row * t * 3 * w + head * d, cos2, sin2, t, w, d, tp, scale, q, k, kt, vt);
            memset(dk, 0, sizeof(float) * 2 * t * d);
            for (int64_t i = 0; i < t; i += 2) {  /* as the forward: rows i and i + 1, or i alone at an odd end */
                const int64_t rows[2] = {i, i + 1 < t ? i + 1 : i}, n = rows[1] + 1, np = (n + 7) & ~(int64_t)7;
                const float *go[2], *out;
                float delta[2];
                for (int r = 0; r < 2; r++) {
                    go[r] = dy + (row * t + rows[r]) * w + head * d, out = y + (row * t + rows[r]) * w + head * d;
                    delta[r] = dot(go[r], out, d);
                }
                combine2(q + rows[0] * d, q + rows[1] * d, kt, d, tp, np, p, p + tp);
                combine2(go[0], go[1], vt, d, tp, np, ds, ds + tp);
                for (int r = 0; r < 2; r++) {
                    float *pr = p + r * tp, *dr = ds + r * tp;
                    exps(pr, rows[r] + 1, np, lse[task * t + rows[r]]);
                    for (int64_t j = 0; j < np; j++) dr[j] = pr[j] * (dr[j] - delta[r]);
                }
                /* as the forward: the keys both queries see, then the second's own */
                combine2(ds, ds + tp, k, rows[0] + 1, d, d, dq + rows[0] * d, dq + rows[1] * d);
                if (rows[1] == rows[0]) { /* the lone row's gradients are added once */
                    memset(p + tp, 0, sizeof(float) * tp), memset(ds + tp, 0, sizeof(float) * tp);
                } else {
                    const int64_t j = rows[1];
                    axpy(ds[tp + j], k + j * d, dq + j * d, d);
                    axpy(ds[tp + j], q + j * d, dk + j * d, d);
                    axpy(p[tp + j], go[1], dv + j * d, d);
                }
                outer2(ds, ds + tp, q + rows[0] * d, q + rows[1] * d, dk, rows[0] + 1, d);
                outer2(p, p + tp, go[0], go[1], dv, rows[0] + 1, d);
            }
            float *gbase = dqkv + row * t * 3 * w + head * d;
            for (int64_t i = 0; i < t; i++) {
                const float *c = cos2 ? cos2 + i * d : 0, *sn = sin2 ? sin2 + i * d : 0;
                const float *sh = sin2 ? sn + d / 2 : 0;
                float *gx = gbase + i * 3 * w;
                rotate(dq + i * d, c, sh, sn, gx, d, scale); /* the rotation undone: its gradient */
                rotate(dk + i * d, c, sh, sn, gx + w, d, 1.0f);
                memcpy(gx + 2 * w, dv + i * d, sizeof(float) * d);
            }
        }
    }
    free(scratch);
    return 0;
}

/* An optimizer step over a model's tensors in one parallel region, in pieces of SPAN elements (torch's fused AdamW
   starts a region per tensor: about 19 us each, 1 ms of char-small's 51 tensors, where this takes 0.25 ms) */
#define SPAN 8192

/* The (tensor, offset) of each SPAN-element piece of n tensors in order, and their count; NULL where the memory
   cannot be had */
static int64_t *spans(const int64_t *sizes, int64_t n, int64_t *count) {
    int64_t c = 0;
    for (int64_t t = 0; t < n; t++) c += (sizes[t] + SPAN - 1) / SPAN;
    int64_t *list = malloc(sizeof(int64_t) * 2 * (c ? c : 1));
    if (!list) return 0;
    for (int64_t t = 0, k = 0; t < n; t++)
        for (int64_t s = 0; s < sizes[t]; s += SPAN, k++) list[2 * k] = t, list[2 * k + 1] = s;
    *count = c;
    return list;
}

typedef struct {
    double lr, weight_decay, beta1, beta2, eps;
} adamw_group;

/* torch.optim.AdamW's update of n elements, the gradient divided by scale first */
static FMA void adamw_piece(float *p, const float *g, float *m, float *v, int64_t n, const adamw_group *h,
                            double step, float scale) {
    const double correction1 = 1 - pow(h->beta1, step), correction2 = 1 - pow(h->beta2, step);
    const float decay = (float)(1 - h->lr * h->weight_decay), b1 = (float)h->beta1, b2 = (float)h->beta2;
    const float c1 = (float)(1 - h->beta1), c2 = (float)(1 - h->beta2), step_size = (float)(h->lr / correction1);
    const float root = (float)sqrt(correction2), eps = (float)h->eps;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 gi = _mm256_div_ps(_mm256_loadu_ps(g + i), _mm256_set1_ps(scale));
        const __m256 mi = _mm256_fmadd_ps(_mm256_loadu_ps(m + i), _mm256_set1_ps(b1), _mm256_mul_ps(gi, _mm256_set1_ps(c1)));
        const __m256 vi = _mm256_fmadd_ps(_mm256_loadu_ps(v + i), _mm256_set1_ps(b2),
                                          _mm256_mul_ps(_mm256_mul_ps(gi, gi), _mm256_set1_ps(c2)));
        const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), _mm256_set1_ps(root)), _mm256_set1_ps(eps));
        const __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), _mm256_set1_ps(decay));
        _mm256_storeu_ps(p + i, _mm256_fnmadd_ps(_mm256_set1_ps(step_size), _mm256_div_ps(mi, denom), pi));
        _mm256_storeu_ps(m + i, mi), _mm256_storeu_ps(v + i, vi);
    }
    for (; i < n; i++) {
        const float gi = g[i] / scale;
        m[i] = fmaf(m[i], b1, gi * c1), v[i] = fmaf(v[i], b2, gi * gi * c2);
        p[i] = fmaf(-step_size, m[i] / (sqrtf(v[i]) / root + eps), p[i] * decay);
    }
}

/* One AdamW step of n fp32 tensors: parameters p, gradients g, moments m and v, and each tensor's step count (a
   float, counted up here first, as torch keeps it), with its group's hyperparameters. Returns 1, having changed
   nothing, where the memory for its list of pieces cannot be had. */
int f32_adamw(float *const *p, const float *const *g, float *const *m, float *const *v, float *const *steps,
              const int64_t *sizes, const adamw_group *groups, int64_t n, float scale, int threads) {
    int64_t count = 0, *list = spans(sizes, n, &count);
    if (!list) return 1;
    for (int64_t t = 0; t < n; t++) steps[t][0] += 1.0f;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < count; k++) {
        const int64_t t = list[2 * k], s = list[2 * k + 1], len = sizes[t] - s < SPAN ? sizes[t] - s : SPAN;
        adamw_piece(p[t] + s, g[t] + s, m[t] + s, v[t] + s, len, groups + t, steps[t][0], scale);
    }
    free(list);
    return 0;
}

static FMA float piece_squares(const float *x, int64_t n) {
    __m256 a = _mm256_setzero_ps(), b = a;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
        a = _mm256_fmadd_ps(x0, x0, a), b = _mm256_fmadd_ps(x1, x1, b);
    }
    float lanes[8], s = 0.0f;
    _mm256_storeu_ps(lanes, _mm256_add_ps(a, b));
    for (int k = 0; k < 8; k++) s += lanes[k];
    for (; i < n; i++) s += x[i] * x[i];
    return s;
}

/* *out = the sum of the squares of n fp32 tensors' elements: each piece's in fp32, the pieces' in double in order,
   so the same on any number of threads. Returns 1 as f32_adamw does. */
int f32_sum_squares(const float *const *x, const int64_t *sizes, int64_t n, int threads, double *out) {
    int64_t count = 0, *list = spans(sizes, n, &count);
    double *parts = list ? malloc(sizeof(double) * (count ? count : 1)) : 0;
    if (!parts) return free(list), 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < count; k++) {
        const int64_t t = list[2 * k], s = list[2 * k + 1], len = sizes[t] - s < SPAN ? sizes[t] - s : SPAN;
        parts[k] = piece_squares(x[t] + s, len);
    }
    double total = 0.0;
    for (int64_t k = 0; k < count; k++) total += parts[k];
    free(list), free(parts);
    *out = total;
    return 0;
}

/* Exact GELU of eight values, u Phi(u), and its derivative Phi(u) + u phi(u), from one exponential: erf as
   Abramowitz and Stegun's 7.1.26 (torch's vectorized erf; absolute error under 1.5e-7), whose e^(-u^2/2) is also
   phi's */
static FMA inline void gelu8(__m256 u, __m256 *a, __m256 *d) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    const __m256 x = _mm256_mul_ps(u, _mm256_set1_ps(0.70710678118654752f));
    const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), _mm256_andnot_ps(sign, x), one));
    __m256 r = _mm256_set1_ps(1.061405429f);
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(-1.453152027f));
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(1.421413741f));
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(-0.284496736f));
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(0.254829592f));
    const __m256 e = exp8(_mm256_mul_ps(_mm256_xor_ps(x, sign), x));
    const __m256 erf = _mm256_or_ps(_mm256_and_ps(sign, x), _mm256_fnmadd_ps(_mm256_mul_ps(r, t), e, one));
    const __m256 cdf = _mm256_fmadd_ps(erf, _mm256_set1_ps(0.5f), _mm256_set1_ps(0.5f));
    *a = _mm256_mul_ps(u, cdf);
    *d = _mm256_fmadd_ps(_mm256_mul_ps(u, e), _mm256_set1_ps(0.39894228040143268f), cdf);
}

/* GELU's tanh form, u (1 + tanh z) / 2 with z = sqrt(2 / pi) (u + 0.044715 u^3), and its derivative, from one
   exponential: (1 + tanh z) / 2 is the logistic s = 1 / (1 + e^(-2z)), 1 - tanh^2 z = 4 s (1 - s) and 1 - s =
   e^(-2z) s. -2z is held under 88, where e^(-2z) would leave fp32 (s is 0 there as it is), a NaN kept. */
static FMA inline void gelu_tanh8(__m256 u, __m256 *a, __m256 *d) {
    const __m256 one = _mm256_set1_ps(1.0f), k = _mm256_set1_ps(0.79788456080286536f), c = _mm256_set1_ps(0.044715f);
    const __m256 u2 = _mm256_mul_ps(u, u);
    const __m256 z = _mm256_mul_ps(_mm256_mul_ps(k, u), _mm256_fmadd_ps(c, u2, one));
    const __m256 e = exp8(_mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_mul_ps(_mm256_set1_ps(-2.0f), z)));
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, e));
    const __m256 dz = _mm256_mul_ps(k, _mm256_fmadd_ps(_mm256_set1_ps(3 * 0.044715f), u2, one));
    *a = _mm256_mul_ps(u, s);
    const __m256 es = _mm256_mul_ps(e, s); /* 1 - s, exact where s rounds to 1 */
    *d = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(u, dz), _mm256_set1_ps(2.0f)), _mm256_mul_ps(s, es), s);
}

/* gelu8 or gelu_tanh8 over u [i, end) into a and d (which may be u), two vectors at a time: one vector's chain of
   dependent operations (the division, the polynomials, the exponential) is longer than the core can overlap with the
   next one's on its own (a 2-core Zen 4, 768 x 512 values: 200 -> 175 us exact, the tanh form's unchanged). The last
   values short of eight go through a padded copy, so every value takes the same arithmetic. */
static FMA inline void gelu_span(const float *u, float *a, float *d, int64_t i, int64_t end, int tanh_form) {
    __m256 a0, d0, a1, d1;
    for (; i + 16 <= end; i += 16) {
        const __m256 u0 = _mm256_loadu_ps(u + i), u1 = _mm256_loadu_ps(u + i + 8);
        if (tanh_form) {
            gelu_tanh8(u0, &a0, &d0), gelu_tanh8(u1, &a1, &d1);
        } else {
            gelu8(u0, &a0, &d0), gelu8(u1, &a1, &d1);
        }
        _mm256_storeu_ps(a + i, a0), _mm256_storeu_ps(a + i + 8, a1);
        _mm256_storeu_ps(d + i, d0), _mm256_storeu_ps(d + i + 8, d1);
    }
    for (; i < end; i += 8) {
        float in[8] = {0}, out_a[8], out_d[8];
        const int64_t m = end - i < 8 ? end - i : 8;
        memcpy(in, u + i, sizeof(float) * m);
        tanh_form ? gelu_tanh8(_mm256_loadu_ps(in), &a0, &d0) : gelu8(_mm256_loadu_ps(in), &a0, &d0);
        _mm256_storeu_ps(out_a, a0), _mm256_storeu_ps(out_d, d0);
        memcpy(a + i, out_a, sizeof(float) * m), memcpy(d + i, out_d, sizeof(float) * m);
    }
}

/* a = GELU(u) and d = GELU'(u) for n fp32 values (the tanh form where tanh_form is set), in pieces of SPAN over the
   threads; d may be u itself (the derivative replaces the input, which only the gradient needed) */
FMA void f32_gelu(const float *u, float *a, float *d, int64_t n, int tanh_form, int threads) {
    const int64_t pieces = (n + SPAN - 1) / SPAN;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < pieces; k++) {
        const int64_t end = (k + 1) * SPAN < n ? (k + 1) * SPAN : n;
        /* a constant form in each call: each inlined copy of the loop has no branch on it */
        tanh_form ? gelu_span(u, a, d, k * SPAN, end, 1) : gelu_span(u, a, d, k * SPAN, end, 0);
    }
}

/* Layer norms of rows of d values (d a multiple of 8), in pieces of NORM_ROWS rows over the threads */
#define NORM_ROWS 32

static FMA inline float row_sum(const float *x, int64_t d) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < d; c += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + c));
    return hsum(acc);
}

/* h = a + x (where x is given; h may be a), then n = (h - mean) rstd w + b per row, with each row's mean and rstd
   = 1 / sqrt(variance + eps) kept for the backward (torch.native_layer_norm's outputs; the variance the biased one,
   from a second pass over the row); b may be absent */
FMA void f32_add_layer_norm(const float *a, const float *x, float *h, float *n, float *mean, float *rstd,
                            const float *w, const float *b, int64_t rows, int64_t d, float eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *ar = a + r * d;
        float *hr = h + r * d, *nr = n + r * d;
        if (x)
            for (int64_t c = 0; c < d; c += 8)
                _mm256_storeu_ps(hr + c, _mm256_add_ps(_mm256_loadu_ps(ar + c), _mm256_loadu_ps(x + r * d + c)));
        const float *src = x ? hr : ar, mu = row_sum(src, d) / (float)d;
        __m256 sq = _mm256_setzero_ps();
        for (int64_t c = 0; c < d; c += 8) {
            const __m256 z = _mm256_sub_ps(_mm256_loadu_ps(src + c), _mm256_set1_ps(mu));
            sq = _mm256_fmadd_ps(z, z, sq);
        }
        const float inv = 1.0f / sqrtf(hsum(sq) / (float)d + eps);
        mean[r] = mu, rstd[r] = inv;
        for (int64_t c = 0; c < d; c += 8) {
            const __m256 z = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(src + c), _mm256_set1_ps(mu)), _mm256_set1_ps(inv));
            const __m256 bias = b ? _mm256_loadu_ps(b + c) : _mm256_setzero_ps();
            _mm256_storeu_ps(nr + c, _mm256_fmadd_ps(z, _mm256_loadu_ps(w + c), bias));
        }
    }
}

/* The layer norm's gradients from gn (the gradient of n) and its input h, mean and rstd: gh = rstd (g - mean(g) -
   z mean(g z)) with g = gn w and z = (h - mean) rstd, plus residual where given (the gradient that reaches h around
   the norm; gh may be residual itself); gw = sum over rows of gn z and gb = sum of gn (where gb is given), each
   NORM_ROWS-row piece's sums added in order, so the same on any number of threads. Returns 1 where the memory for
   the pieces' sums cannot be had. */
FMA int f32_layer_norm_backward(const float *gn, const float *h, const float *mean, const float *rstd, const float *w,
                                const float *residual, float *gh, float *gw, float *gb, int64_t rows, int64_t d,
                                int threads) {
    const int64_t pieces = (rows + NORM_ROWS - 1) / NORM_ROWS;
    float *parts = calloc((size_t)(pieces ? pieces : 1) * 2 * d, sizeof(float));
    if (!parts) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < pieces; k++) {
        float *pw = parts + k * 2 * d, *pb = pw + d;
        const int64_t end = (k + 1) * NORM_ROWS < rows ? (k + 1) * NORM_ROWS : rows;
        for (int64_t r = k * NORM_ROWS; r < end; r++) {
            const float *gr = gn + r * d, *hr = h + r * d;
            const __m256 mu = _mm256_set1_ps(mean[r]), inv = _mm256_set1_ps(rstd[r]);
            __m256 sg = _mm256_setzero_ps(), sgz = _mm256_setzero_ps();
            for (int64_t c = 0; c < d; c += 8) {
                const __m256 gc = _mm256_loadu_ps(gr + c), z = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(hr + c), mu), inv);
                const __m256 g = _mm256_mul_ps(gc, _mm256_loadu_ps(w + c));
                sg = _mm256_add_ps(sg, g), sgz = _mm256_fmadd_ps(g, z, sgz);
                _mm256_storeu_ps(pw + c, _mm256_fmadd_ps(gc, z, _mm256_loadu_ps(pw + c)));
                _mm256_storeu_ps(pb + c, _mm256_add_ps(gc, _mm256_loadu_ps(pb + c)));
            }
            const __m256 mg = _mm256_set1_ps(hsum(sg) / (float)d), mgz = _mm256_set1_ps(hsum(sgz) / (float)d);
            for (int64_t c = 0; c < d; c += 8) {
                const __m256 z = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(hr + c), mu), inv);
                const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(gr + c), _mm256_loadu_ps(w + c));
                __m256 out = _mm256_mul_ps(inv, _mm256_sub_ps(_mm256_sub_ps(g, mg), _mm256_mul_ps(z, mgz)));
                if (residual) out = _mm256_add_ps(out, _mm256_loadu_ps(residual + r * d + c));
                _mm256_storeu_ps(gh + r * d + c, out);
            }
        }
    }
    for (int64_t c = 0; c < d; c++) {
        float sw = 0.0f, sb = 0.0f;
        for (int64_t k = 0; k < pieces; k++) sw += parts[k * 2 * d + c], sb += parts[k * 2 * d + d + c];
        gw[c] = sw;
        if (gb) gb[c] = sb;
    }
    free(parts);
    return 0;
}

/* Softmax cross-entropy of rows of v logits against their targets, for a loss summed with weights scale[r]: each
   row's log-sum-exp, its target's logit, its mean logit (where mean is given) and the index of its largest logit
   (where top is given; the first of equal ones), with the logits overwritten, where grad is set, by the loss's
   gradient scale[r] (softmax - (1 - eps) onehot - eps / v). A row of scale 0 (an ignored one) gets zeros but for its
   top. One pass for the largest logit, one for the exponentials, their sum and the logits' sum, one for the gradient
   (and, where top is given, a scan up to the largest logit); the last values short of eight take libm's expf. Rows over the threads. Returns 1 where a counted row's target is
   outside [0, v) (that row left as it was), else 0. */
FMA int f32_softmax_cross_entropy(float *logits, const int64_t *targets, const float *scale, int64_t rows, int64_t v,
                                   float eps, int grad, float *lse, float *logit_t, float *mean, int64_t *top,
                                   int threads) {
    int bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : bad)
    for (int64_t r = 0; r < rows; r++) {
        float *l = logits + r * v;
        const float w = scale[r], m = row_max(l, v);
        if (top) {
            int64_t j = 0;
            while (j < v && !(l[j] == m)) j++;
            top[r] = j < v ? j : 0;
        }
        if (w == 0.0f) {
            lse[r] = logit_t[r] = 0.0f;
            if (mean) mean[r] = 0.0f;
            if (grad) memset(l, 0, sizeof(float) * v);
            continue;
        }
        if (targets[r] < 0 || targets[r] >= v) {
            bad = 1;
            continue;
        }
        logit_t[r] = l[targets[r]];
        const __m256 shift = _mm256_set1_ps(m);
        __m256 acc = _mm256_setzero_ps(), all = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 8 <= v; j += 8) {
            const __m256 x = _mm256_loadu_ps(l + j), e = exp8(_mm256_sub_ps(x, shift));
            all = _mm256_add_ps(all, x), acc = _mm256_add_ps(acc, e);
            if (grad) _mm256_storeu_ps(l + j, e);
        }
        float sum = hsum(acc), total = hsum(all);
        for (; j < v; j++) {
            const float e = expf(l[j] - m);
            total += l[j], sum += e;
            if (grad) l[j] = e;
        }
        lse[r] = m + logf(sum);
        if (mean) mean[r] = total / (float)v;
        if (!grad) continue;
        const __m256 c = _mm256_set1_ps(w / sum), off = _mm256_set1_ps(w * eps / (float)v);
        for (j = 0; j + 8 <= v; j += 8) _mm256_storeu_ps(l + j, _mm256_fmsub_ps(_mm256_loadu_ps(l + j), c, off));
        for (; j < v; j++) l[j] = l[j] * (w / sum) - w * eps / (float)v;
        l[targets[r]] -= w * (1.0f - eps);
    }
    return bad;
}
