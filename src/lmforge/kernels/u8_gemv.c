/* Exact int32 sums of uint8 activations times int8 weights, for the few rows of a decoding step on x86 CPUs
   without VNNI. fbgemm's kernel, blocked for many rows, streams a weight at 13-17 GB/s for one row on a 2-core Zen 3;
   this loop streams each weight row once, 32 bytes at a time, at 22-28 GB/s. Built by lmforge.kernels.native. */
#include <immintrin.h>
#include <stdint.h>

static inline int32_t sum8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* out[i, j] = sum_t x[i, t] q[j, t] in fp32, x (m, k) uint8, q (n, k) int8, both row-major. maddubs adds the products
   of columns 2t and 2t + 1 in int16, which stays exact where x keeps 7 bits (2 * 127 * 127 < 2^15) or q's adjacent
   pairs are bounded, |q[j, 2t]| + |q[j, 2t + 1]| <= 128 (255 * 128 < 2^15). */
void u8_gemv(const uint8_t *x, const int8_t *q, float *out, int64_t m, int64_t n, int64_t k, int threads) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t k32 = k & ~(int64_t)31;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < n; j++) {
        const int8_t *qj = q + j * k;
        for (int64_t i = 0; i < m; i++) {
            const uint8_t *xi = x + i * k;
            __m256i acc = _mm256_setzero_si256();
            for (int64_t t = 0; t < k32; t += 32) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(xi + t));
                __m256i b = _mm256_loadu_si256((const __m256i *)(qj + t));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
            }
            int32_t s = sum8(acc);
            for (int64_t t = k32; t < k; t++) s += (int32_t)xi[t] * qj[t];
            out[i * n + j] = (float)s;
        }
    }
}
