/* Peak multiply-add rate of one instruction family of this CPU, one OpenMP thread per
 * allowed CPU, register-only (the issue rate that torch.mm / oneDNN kernels approach).
 *
 * One kernel per binary: benchmarks/peak.py compiles this file once per kernel with
 * -DPEAK_<KERNEL> and that kernel's -m flags, and runs only the kernels whose flags the
 * CPU reports, so no binary holds an instruction the CPU lacks (the AVX-512-only probe
 * died with SIGILL on a Zen 3).
 * Usage: fma_peak-<kernel> [iterations]   Prints: "<G(FL)OP/s>". Exit 3: AMX refused. */
#define _GNU_SOURCE
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#define CHAINS 12 /* independent accumulators: hide a 4-6 cycle latency on 2 pipes */

/* Each vector kernel says: its accumulator type, CONSTS (operands, set once), INIT(i),
 * STEP(acc) (one dependent multiply-add) and SUM(acc) (lanes to a float); the loop over
 * CHAINS accumulators below is shared. OPS_PER_STEP counts a multiply and an add as 2. */
#if defined(PEAK_AVX2_FMA) || defined(PEAK_AVX2_INT8) || defined(PEAK_AVX_VNNI)
static inline float sum256_ps(__m256 v) {
    float out[8], sum = 0;
    _mm256_storeu_ps(out, v);
    for (int j = 0; j < 8; j++) sum += out[j];
    return sum;
}
static inline float sum256_epi32(__m256i v) {
    int out[8];
    long sum = 0;
    _mm256_storeu_si256((__m256i *)out, v);
    for (int j = 0; j < 8; j++) sum += out[j];
    return (float)sum;
}
#endif

#if defined(PEAK_AVX2_FMA) /* fp32, VFMADD231PS ymm: 8 lanes x 2 flops */
#define OPS_PER_STEP (16.0 * CHAINS)
typedef __m256 acc_t;
#define CONSTS __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-6f)
#define INIT(i) _mm256_set1_ps((float)(i))
#define STEP(x) _mm256_fmadd_ps(x, a, b)
#define SUM(x) sum256_ps(x)

#elif defined(PEAK_AVX2_INT8) /* int8 without VNNI: VPMADDUBSW + VPMADDWD + VPADDD, 32 MACs */
#define OPS_PER_STEP (64.0 * CHAINS)
typedef __m256i acc_t;
#define CONSTS __m256i b = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1)
#define INIT(i) _mm256_set1_epi32(i)
/* the accumulator is also the u8 operand, so the products cannot be hoisted */
#define STEP(x) _mm256_add_epi32(x, _mm256_madd_epi16(_mm256_maddubs_epi16(x, b), ones))
#define SUM(x) sum256_epi32(x)

#elif defined(PEAK_AVX_VNNI) /* int8, VPDPBUSD ymm (VEX): 32 u8 x s8 MACs */
#define OPS_PER_STEP (64.0 * CHAINS)
typedef __m256i acc_t;
#define CONSTS __m256i a = _mm256_set1_epi8(1), b = _mm256_set1_epi8(3)
#define INIT(i) _mm256_set1_epi32(i)
#define STEP(x) _mm256_dpbusd_avx_epi32(x, a, b)
#define SUM(x) sum256_epi32(x)

#elif defined(PEAK_AVX512_FMA) /* fp32, VFMADD231PS zmm: 16 lanes x 2 flops */
#define OPS_PER_STEP (32.0 * CHAINS)
typedef __m512 acc_t;
#define CONSTS __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-6f)
#define INIT(i) _mm512_set1_ps((float)(i))
#define STEP(x) _mm512_fmadd_ps(x, a, b)
#define SUM(x) _mm512_reduce_add_ps(x)

#elif defined(PEAK_AVX512_BF16) /* bf16, VDPBF16PS zmm: 32 products + 32 adds */
#define OPS_PER_STEP (64.0 * CHAINS)
typedef __m512 acc_t;
#define CONSTS __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f))
#define INIT(i) _mm512_set1_ps((float)(i))
#define STEP(x) _mm512_dpbf16_ps(x, a, a)
#define SUM(x) _mm512_reduce_add_ps(x)

#elif defined(PEAK_AVX512_FP16) /* fp16, VFMADD231PH zmm: 32 lanes x 2 flops */
#define OPS_PER_STEP (64.0 * CHAINS)
typedef __m512h acc_t;
#define CONSTS __m512h a = _mm512_set1_ph((_Float16)0.999f), b = _mm512_set1_ph((_Float16)1e-3f)
#define INIT(i) _mm512_set1_ph((_Float16)(i))
#define STEP(x) _mm512_fmadd_ph(x, a, b)
#define SUM(x) ((float)_mm512_reduce_add_ph(x))

#elif defined(PEAK_AVX512_VNNI) /* int8, VPDPBUSD zmm: 64 u8 x s8 MACs */
#define OPS_PER_STEP (128.0 * CHAINS)
typedef __m512i acc_t;
#define CONSTS __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(3)
#define INIT(i) _mm512_set1_epi32(i)
#define STEP(x) _mm512_dpbusd_epi32(x, a, b)
#define SUM(x) ((float)_mm512_reduce_add_epi32(x))

#elif defined(PEAK_AMX_BF16) || defined(PEAK_AMX_INT8)
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
/* Six accumulator tiles (0-5) against A (6) and B (7), all 16 rows x 64 bytes: a tile
 * product's latency is several times its issue interval, six chains cover it. */
#define TILE_CHAINS 6
#if defined(PEAK_AMX_BF16) /* TDPBF16PS: C[16x16 fp32] += A[16x32 bf16] B[32x16 bf16] */
#define OPS_PER_STEP (2.0 * 16 * 16 * 32 * TILE_CHAINS)
#define TILE_DOT(c) _tile_dpbf16ps(c, 6, 7)
#else /* TDPBUSD: C[16x16 s32] += A[16x64 u8] B[64x16 s8] */
#define OPS_PER_STEP (2.0 * 16 * 16 * 64 * TILE_CHAINS)
#define TILE_DOT(c) _tile_dpbusd(c, 6, 7)
#endif
#define HAVE_PREPARE
#define HAVE_KERNEL
/* Linux hands out AMX tile state only to processes that ask for it. */
static int prepare(void) {
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) ? 3 : 0;
}
static float kernel(long iters) {
    unsigned char config[64];
    memset(config, 0, sizeof config);
    config[0] = 1; /* palette 1 */
    for (int t = 0; t < 8; t++) {
        config[16 + 2 * t] = 64; /* bytes per row */
        config[48 + t] = 16;     /* rows */
    }
    _tile_loadconfig(config);
    unsigned char data[16 * 64]; /* small values: sums stay finite */
    for (int i = 0; i < 16 * 64; i++) data[i] = (i & 1) ? 0x3a : 0x01;
    _tile_loadd(6, data, 64);
    _tile_loadd(7, data, 64);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); _tile_zero(4); _tile_zero(5);
    for (long n = 0; n < iters; n++) {
        TILE_DOT(0); TILE_DOT(1); TILE_DOT(2); TILE_DOT(3); TILE_DOT(4); TILE_DOT(5);
    }
    static __thread float out[16 * 16];
    _tile_stored(0, out, 64);
    _tile_release();
    return out[0];
}
#define ITER_SCALE 16 /* a tile product issues every ~16 cycles, an FMA 2 per cycle */

#elif defined(PEAK_NEON_FMA) /* fp32, FMLA v.4s: 4 lanes x 2 flops */
#define OPS_PER_STEP (8.0 * CHAINS)
typedef float32x4_t acc_t;
#define CONSTS float32x4_t a = vdupq_n_f32(0.999f), b = vdupq_n_f32(1e-6f)
#define INIT(i) vdupq_n_f32((float)(i))
#define STEP(x) vfmaq_f32(b, x, a)
#define SUM(x) vaddvq_f32(x)

#elif defined(PEAK_NEON_DOTPROD) /* int8, SDOT v.4s: 16 s8 x s8 MACs */
#define OPS_PER_STEP (32.0 * CHAINS)
typedef int32x4_t acc_t;
#define CONSTS int8x16_t a = vdupq_n_s8(1), b = vdupq_n_s8(3)
#define INIT(i) vdupq_n_s32(i)
#define STEP(x) vdotq_s32(x, a, b)
#define SUM(x) ((float)vaddvq_s32(x))

#elif defined(PEAK_NEON_I8MM) /* int8, SMMLA: [2x8] x [8x2] s8 -> 2x2 s32, 32 MACs */
#define OPS_PER_STEP (64.0 * CHAINS)
typedef int32x4_t acc_t;
#define CONSTS int8x16_t a = vdupq_n_s8(1), b = vdupq_n_s8(3)
#define INIT(i) vdupq_n_s32(i)
#define STEP(x) vmmlaq_s32(x, a, b)
#define SUM(x) ((float)vaddvq_s32(x))

#elif defined(PEAK_NEON_BF16) /* bf16, BFMMLA: [2x4] x [4x2] bf16 -> 2x2 fp32, 16 MACs */
#define OPS_PER_STEP (32.0 * CHAINS)
typedef float32x4_t acc_t;
#define CONSTS bfloat16x8_t a = vcombine_bf16(vcvt_bf16_f32(vdupq_n_f32(1e-3f)), \
                                              vcvt_bf16_f32(vdupq_n_f32(1e-3f)))
#define INIT(i) vdupq_n_f32((float)(i))
#define STEP(x) vbfmmlaq_f32(x, a, a)
#define SUM(x) vaddvq_f32(x)

#elif defined(PEAK_SVE_FMA) /* fp32, FMLA z.s: (vector length / 32) lanes x 2 flops */
#include <arm_sve.h>
/* SVE registers are sizeless: no arrays of them, so 8 named chains (2 pipes x latency 4) */
#define OPS_PER_STEP (2.0 * svcntw() * 8)
#define HAVE_KERNEL
static float kernel(long iters) {
    svbool_t all = svptrue_b32();
    svfloat32_t a = svdup_n_f32(0.999f), b = svdup_n_f32(1e-6f);
    svfloat32_t c0 = svdup_n_f32(0), c1 = svdup_n_f32(1), c2 = svdup_n_f32(2),
                c3 = svdup_n_f32(3), c4 = svdup_n_f32(4), c5 = svdup_n_f32(5),
                c6 = svdup_n_f32(6), c7 = svdup_n_f32(7);
    for (long n = 0; n < iters; n++) {
        c0 = svmla_f32_x(all, b, c0, a); c1 = svmla_f32_x(all, b, c1, a);
        c2 = svmla_f32_x(all, b, c2, a); c3 = svmla_f32_x(all, b, c3, a);
        c4 = svmla_f32_x(all, b, c4, a); c5 = svmla_f32_x(all, b, c5, a);
        c6 = svmla_f32_x(all, b, c6, a); c7 = svmla_f32_x(all, b, c7, a);
    }
    svfloat32_t s = svadd_f32_x(all, svadd_f32_x(all, svadd_f32_x(all, c0, c1), svadd_f32_x(all, c2, c3)),
                                svadd_f32_x(all, svadd_f32_x(all, c4, c5), svadd_f32_x(all, c6, c7)));
    return svaddv_f32(all, s);
}

#else
#error "define one PEAK_<KERNEL> (benchmarks/peak.py does)"
#endif

#ifndef HAVE_KERNEL
static float kernel(long iters) {
    CONSTS;
    acc_t acc[CHAINS];
    for (int i = 0; i < CHAINS; i++) acc[i] = INIT(i);
    for (long n = 0; n < iters; n++)
        for (int i = 0; i < CHAINS; i++) acc[i] = STEP(acc[i]);
    float sum = 0;
    for (int i = 0; i < CHAINS; i++) sum += SUM(acc[i]);
    return sum;
}
#endif

#ifndef ITER_SCALE
#define ITER_SCALE 1
#endif
#ifndef HAVE_PREPARE
static int prepare(void) { return 0; }
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
    long iters = (argc > 1 ? atol(argv[1]) : 200000000L / CHAINS) / ITER_SCALE;
    if (iters < 1) iters = 1;
    int status = prepare();
    if (status) {
        fprintf(stderr, "fma_peak: the kernel refused AMX tile data (arch_prctl)\n");
        return status;
    }
    int threads = omp_get_max_threads();
    volatile float sink = 0;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        float part = 0;
        double t0 = now();
#pragma omp parallel reduction(+ : part)
        part += kernel(iters);
        double rate = OPS_PER_STEP * iters * threads / (now() - t0) / 1e9;
        sink += part;
        if (rate > best) best = rate;
    }
    printf("%.1f\n", best);
    return sink == 12345.0f; /* keep the loops alive */
}
