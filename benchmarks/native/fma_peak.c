/* Peak multiply-add rate of this CPU: independent AVX-512 FMA (fp32) and VDPBF16PS (bf16)
 * chains, one OpenMP thread per allowed CPU. Compiled at run time by benchmarks/peak.py.
 * Prints: "<fp32 GFLOP/s> <bf16 GFLOP/s>". A tight register-only loop is the roof that
 * torch.mm (MKL, tuned for Intel) does not reach on AMD CPUs. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 12 /* enough independent accumulators to hide FMA latency on 2 pipes */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static float fp32_loop(long iters) {
    __m512 acc[CHAINS];
    __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-6f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < iters; n++)
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    float sum = 0;
    for (int i = 0; i < CHAINS; i++) sum += _mm512_reduce_add_ps(acc[i]);
    return sum;
}

static float bf16_loop(long iters) {
    __m512 acc[CHAINS];
    __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
    __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < iters; n++)
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    float sum = 0;
    for (int i = 0; i < CHAINS; i++) sum += _mm512_reduce_add_ps(acc[i]);
    return sum;
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 200000000L / CHAINS;
    int threads = omp_get_max_threads();
    volatile float sink = 0;
    double best32 = 0, best16 = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
#pragma omp parallel reduction(+ : sink)
        sink += fp32_loop(iters);
        double t1 = now();
#pragma omp parallel reduction(+ : sink)
        sink += bf16_loop(iters);
        double t2 = now();
        /* fp32: 16 lanes x 2 flops per FMA; bf16: 32 products + 32 adds per VDPBF16PS */
        double f32 = 32.0 * CHAINS * iters * threads / (t1 - t0) / 1e9;
        double f16 = 64.0 * CHAINS * iters * threads / (t2 - t1) / 1e9;
        if (f32 > best32) best32 = f32;
        if (f16 > best16) best16 = f16;
    }
    printf("%.1f %.1f\n", best32, best16);
    return sink == 12345.0f; /* keep the loops alive */
}
