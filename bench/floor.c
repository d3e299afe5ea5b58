/*
 * floor.c -- the memory floor of an N-frame combination, for bench/bench.py.
 *
 * bench_floor() reads each of N frames once and writes the output planes once
 * into memory the caller allocated beforehand, doing the least per-pixel work
 * that still uses every value (a sum over frames).  No combiner can move the
 * same bytes in less time, so bench.py reports every combiner's time as a
 * multiple of this one.  bench.py compiles it with the system C compiler
 * (-O3 -fopenmp) and loads it through ctypes.
 *
 * Layout: every frame and plane is C-contiguous, npix = ny * nx pixels.
 */
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Input kinds. */
#define FLOOR_F32 0         /* float32, native byte order */
#define FLOOR_I16_SWAPPED 1 /* int16 in non-native byte order (FITS on a little-endian CPU) */
#define FLOOR_U16 2         /* uint16, native */
#define FLOOR_I16 3         /* int16, native */

/* Count plane kinds. */
#define FLOOR_COUNT_I16 0 /* npix and nrejected as int16 (combine()) */
#define FLOOR_COUNT_F32 1 /* npix as float32, no nrejected (numina's out=(3, ny, nx)) */

/* Pixels a thread takes at a time: N frames' slices of a block stay in cache. */
#define FLOOR_BLOCK 4096

static void accumulate(float *acc, const void *frame, int kind, size_t begin, size_t len) {
    size_t k;
    if (kind == FLOOR_F32) {
        const float *p = (const float *)frame + begin;
        for (k = 0; k < len; k++) acc[k] += p[k];
    } else if (kind == FLOOR_I16_SWAPPED) {
        const uint16_t *p = (const uint16_t *)frame + begin;
        for (k = 0; k < len; k++) acc[k] += (float)(int16_t)(uint16_t)((p[k] >> 8) | (p[k] << 8));
    } else if (kind == FLOOR_U16) {
        const uint16_t *p = (const uint16_t *)frame + begin;
        for (k = 0; k < len; k++) acc[k] += (float)p[k];
    } else {
        const int16_t *p = (const int16_t *)frame + begin;
        for (k = 0; k < len; k++) acc[k] += (float)p[k];
    }
}

/*
 * frames: nframes pointers to npix values of the given kind; value, variance:
 * npix float32 each; counts: npix values (int16 or float32, see count_kind);
 * nrejected: npix int16 or NULL.  nthreads = 0 uses the OpenMP default.
 * Returns 0, or 1 for an unknown kind.
 */
int bench_floor(const void *const *frames, int nframes, int kind, size_t npix, float bzero,
                float *value, float *variance, void *counts, int count_kind, int16_t *nrejected,
                int nthreads) {
    const long nblocks = (long)((npix + FLOOR_BLOCK - 1) / FLOOR_BLOCK);
    const float inv_n = 1.0f / (float)nframes;
    long b;
    if (kind < FLOOR_F32 || kind > FLOOR_I16 || count_kind < 0 || count_kind > 1) return 1;
#ifdef _OPENMP
    if (nthreads <= 0) nthreads = omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(nthreads)
#endif
    for (b = 0; b < nblocks; b++) {
        float acc[FLOOR_BLOCK];
        const size_t begin = (size_t)b * FLOOR_BLOCK;
        const size_t len = npix - begin < FLOOR_BLOCK ? npix - begin : FLOOR_BLOCK;
        size_t k;
        int i;
        for (k = 0; k < len; k++) acc[k] = 0.0f;
        for (i = 0; i < nframes; i++) accumulate(acc, frames[i], kind, begin, len);
        for (k = 0; k < len; k++) {
            value[begin + k] = acc[k] * inv_n + bzero;
            variance[begin + k] = acc[k] * acc[k];
        }
        if (count_kind == FLOOR_COUNT_I16) {
            int16_t *c = (int16_t *)counts + begin;
            for (k = 0; k < len; k++) c[k] = (int16_t)nframes;
        } else {
            float *c = (float *)counts + begin;
            for (k = 0; k < len; k++) c[k] = (float)nframes;
        }
        if (nrejected != NULL)
            for (k = 0; k < len; k++) nrejected[begin + k] = 0;
    }
    (void)nthreads;
    return 0;
}
