/* Histogram kernels shared by the Python extension (_fasthist.c) and the onnxruntime observer
 * op (_ortobserve.c): one read of float32 data gives amax, the NaN/Inf check and the counts of
 * ceil(|x| * scale), the collector's binning rule (see collector.py and _fasthist.c).
 */
#ifndef TRTQ_HISTKERNELS_H
#define TRTQ_HISTKERNELS_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define TRTQ_X86 1
#include <immintrin.h>
#endif

enum { BLOCK = 4096, FLUSH_BLOCKS = 256 };

typedef struct {
    uint32_t *sub; /* 4 * m counters */
    int64_t *out;  /* m counts */
    size_t m;      /* n + 2 */
    size_t blocks;
} Counter;

/* Add the sub-histograms into the int64 counts and clear them. */
static void flush(Counter *c) {
    uint32_t *s = c->sub;
    size_t m = c->m;
    for (size_t b = 0; b < m; b++) {
        c->out[b] += (int64_t)s[b] + s[m + b] + s[2 * m + b] + s[3 * m + b];
    }
    memset(s, 0, 4 * m * sizeof(uint32_t));
}

/* Count `k` ceil values (plus `zeros` zeros) into the sub-histograms; flush every FLUSH_BLOCKS blocks. */
static void count_block(Counter *c, const int32_t *bins, size_t k, size_t zeros) {
    uint32_t *s = c->sub;
    size_t m = c->m, j = 0;
    s[0] += (uint32_t)zeros;
    for (; j + 4 <= k; j += 4) {
        s[bins[j]]++;
        s[m + bins[j + 1]]++;
        s[2 * m + bins[j + 2]]++;
        s[3 * m + bins[j + 3]]++;
    }
    for (; j < k; j++) {
        s[bins[j]]++;
    }
    if (++c->blocks % FLUSH_BLOCKS == 0) {
        flush(c);
    }
}

/* The rule for one value: its ceil value (NaN compares false and lands in the top bin), with amax
 * and the non-finite flag updated. The SIMD kernels use it for their last few values. */
static inline int32_t ceil_bin(float x, float scale, float top, float *amax, int *bad) {
    float a = fabsf(x);
    *bad |= !(a <= FLT_MAX);
    *amax = a > *amax ? a : *amax;
    float y = a * scale;
    y = y < top ? y : top;
    int32_t t = (int32_t)y; /* y >= 0, so truncation is floor; no libm ceilf call on baseline x86 */
    return t + ((float)t < y);
}

/* Portable kernel: one value at a time (the compiler vectorises the first loop where it can). */
static float pass_generic(const float *x, size_t size, float scale, Counter *c, int *nonfinite) {
    float top = (float)(c->m - 1), amax = 0.0f;
    int bad = 0;
    int32_t bins[BLOCK];
    for (size_t start = 0; start < size; start += BLOCK) {
        size_t len = size - start < BLOCK ? size - start : BLOCK;
        const float *xb = x + start;
        for (size_t i = 0; i < len; i++) {
            bins[i] = ceil_bin(xb[i], scale, top, &amax, &bad);
        }
        count_block(c, bins, len, 0);
    }
    *nonfinite = bad;
    return amax;
}

#ifdef TRTQ_X86
static int32_t left_pack[256][8]; /* AVX2 lane permutation that moves the set lanes of a mask first */

static void init_left_pack(void) {
    for (int mask = 0; mask < 256; mask++) {
        int k = 0;
        for (int lane = 0; lane < 8; lane++) {
            if (mask >> lane & 1) {
                left_pack[mask][k++] = lane;
            }
        }
        while (k < 8) {
            left_pack[mask][k++] = 0;
        }
    }
}

__attribute__((target("avx2,popcnt"))) static float pass_avx2(const float *x, size_t size, float scale, Counter *c,
                                                               int *nonfinite) {
    const __m256 vscale = _mm256_set1_ps(scale), vtop = _mm256_set1_ps((float)(c->m - 1));
    const __m256 vfltmax = _mm256_set1_ps(FLT_MAX), sign = _mm256_set1_ps(-0.0f);
    __m256 vmax = _mm256_setzero_ps(), vbad = _mm256_setzero_ps();
    float top = (float)(c->m - 1), amax = 0.0f;
    int bad = 0;
    int32_t bins[BLOCK + 8];
    for (size_t start = 0; start < size; start += BLOCK) {
        size_t len = size - start < BLOCK ? size - start : BLOCK;
        const float *xb = x + start;
        size_t k = 0, zeros = 0, i = 0;
        for (; i + 8 <= len; i += 8) {
            __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + i));
            vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(a, vfltmax, _CMP_NLE_UQ));
            vmax = _mm256_max_ps(vmax, a);
            __m256 y = _mm256_min_ps(_mm256_mul_ps(a, vscale), vtop); /* NaN -> vtop */
            __m256i t = _mm256_cvttps_epi32(_mm256_ceil_ps(y));
            int keep = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, _mm256_setzero_si256())));
            __m256i packed = _mm256_permutevar8x32_epi32(t, _mm256_loadu_si256((const __m256i *)left_pack[keep]));
            _mm256_storeu_si256((__m256i *)(bins + k), packed);
            int kept = __builtin_popcount((unsigned)keep);
            k += (size_t)kept;
            zeros += (size_t)(8 - kept);
        }
        for (; i < len; i++) {
            bins[k++] = ceil_bin(xb[i], scale, top, &amax, &bad);
        }
        count_block(c, bins, k, zeros);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    for (int q = 0; q < 8; q++) {
        amax = lanes[q] > amax ? lanes[q] : amax;
    }
    *nonfinite = bad | (_mm256_movemask_ps(vbad) != 0);
    return amax;
}

__attribute__((target("avx512f,popcnt"))) static float pass_avx512(const float *x, size_t size, float scale,
                                                                   Counter *c, int *nonfinite) {
    const __m512 vscale = _mm512_set1_ps(scale), vtop = _mm512_set1_ps((float)(c->m - 1));
    const __m512 vfltmax = _mm512_set1_ps(FLT_MAX);
    __m512 vmax = _mm512_setzero_ps();
    __mmask16 vbad = 0;
    float top = (float)(c->m - 1), amax = 0.0f;
    int bad = 0;
    int32_t bins[BLOCK + 16];
    for (size_t start = 0; start < size; start += BLOCK) {
        size_t len = size - start < BLOCK ? size - start : BLOCK;
        const float *xb = x + start;
        size_t k = 0, zeros = 0, i = 0;
        for (; i + 16 <= len; i += 16) {
            __m512 a = _mm512_abs_ps(_mm512_loadu_ps(xb + i));
            vbad |= _mm512_cmp_ps_mask(a, vfltmax, _CMP_NLE_UQ);
            vmax = _mm512_max_ps(vmax, a);
            __m512 y = _mm512_min_ps(_mm512_mul_ps(a, vscale), vtop); /* NaN -> vtop */
            __m512i t = _mm512_cvt_roundps_epi32(y, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
            __mmask16 keep = _mm512_test_epi32_mask(t, t);
            /* compress into a register, then a plain store: compress-to-memory is slow on some CPUs */
            _mm512_storeu_si512((void *)(bins + k), _mm512_maskz_compress_epi32(keep, t));
            int kept = __builtin_popcount((unsigned)keep);
            k += (size_t)kept;
            zeros += (size_t)(16 - kept);
        }
        for (; i < len; i++) {
            bins[k++] = ceil_bin(xb[i], scale, top, &amax, &bad);
        }
        count_block(c, bins, k, zeros);
    }
    float lane_max = _mm512_reduce_max_ps(vmax);
    amax = lane_max > amax ? lane_max : amax;
    *nonfinite = bad | (vbad != 0);
    return amax;
}
#endif

typedef float (*pass_fn)(const float *, size_t, float, Counter *, int *);

enum { KERNEL_GENERIC = 0, KERNEL_AVX2 = 1, KERNEL_AVX512 = 2 };

static int best_kernel = KERNEL_GENERIC;

/* Pick the best kernel for this CPU (once per loaded library). */
static void init_kernels(void) {
#ifdef TRTQ_X86
    __builtin_cpu_init();
    init_left_pack();
    if (__builtin_cpu_supports("avx512f")) {
        best_kernel = KERNEL_AVX512;
    } else if (__builtin_cpu_supports("avx2")) {
        best_kernel = KERNEL_AVX2;
    }
#endif
}

static pass_fn kernel_fn(int kernel) {
#ifdef TRTQ_X86
    if (kernel == KERNEL_AVX512) {
        return pass_avx512;
    }
    if (kernel == KERNEL_AVX2) {
        return pass_avx2;
    }
#endif
    return pass_generic;
}

#endif
