/* lmforge's C kernels for x86 CPUs with AVX2, built by lmforge.kernels.native.

   The few rows of a decoding step, each weight row streamed once, 32 bytes at a time. int8: exact int32 sums of int8
   weights times uint8 activations where the CPU lacks VNNI, int8 ones where it has it (whose own int8 product,
   oneDNN's torch._int_mm, reads a weight for one row at a fifth of the bandwidth). fbgemm's kernel, blocked for many
   rows, streams a weight at 13-17 GB/s for one row on a 2-core Zen 3; these loops do at 22-28 GB/s there and 28-32
   GB/s on a 2-core Zen 4 (four rows at a time were half as fast: more streams than the prefetchers follow). bf16: the
   weights' values as fp32 against fp32 activations.

   A transposing copy of an fp32 matrix, for the operands of a training step's oneDNN products that oneDNN would
   otherwise have torch copy (3-5x faster than torch's copy: 8 x 8 blocks transposed in registers). */
#include <immintrin.h>
#include <stdint.h>

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
