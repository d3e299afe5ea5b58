/*
 * md_load.c -- reading rows of typed, strided, possibly byte-swapped images
 * into double tiles, and storing double tiles into typed output planes.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "md_internal.h"

size_t md_dtype_size(int dtype)
{
    switch (dtype) {
    case MD_UINT8: return 1;
    case MD_INT16: case MD_UINT16: return 2;
    case MD_INT32: case MD_FLOAT32: return 4;
    case MD_INT64: case MD_FLOAT64: return 8;
    default: return 0;
    }
}

static inline uint8_t bswap8(uint8_t u) { return u; }
static inline uint16_t bswap16(uint16_t u) { return __builtin_bswap16(u); }
static inline uint32_t bswap32(uint32_t u) { return __builtin_bswap32(u); }
static inline uint64_t bswap64(uint64_t u) { return __builtin_bswap64(u); }

/* Raw element k of a row, byte order fixed, as its own type T. */
#define MD_RAW_AT(T, UT, BSWAP, row, k, stride, swapped, out)                                     \
    do {                                                                                          \
        UT u_;                                                                                    \
        memcpy(&u_, (row) + (ptrdiff_t)(k) * (stride), sizeof u_);                                \
        if (swapped) u_ = BSWAP(u_);                                                              \
        memcpy(&(out), &u_, sizeof(out));                                                         \
    } while (0)

/*
 * Element k of a row as type T, for the three layouts: contiguous native,
 * contiguous byte-swapped (FITS data), and anything else (strided,
 * misaligned).  The contiguous loops are plain enough to vectorise.
 */
#define MD_FOR_EACH_RAW(T, UT, BSWAP, im, row, w, BODY)                                           \
    do {                                                                                          \
        const int contiguous_ = (im)->col_stride == (long long)sizeof(T)                          \
                                && (uintptr_t)(row) % sizeof(T) == 0;                             \
        if (contiguous_ && !(im)->swapped) {                                                      \
            const T *p_ = (const T *)(const void *)(row);                                         \
            for (size_t k = 0; k < (w); k++) {                                                    \
                const T t = p_[k];                                                                \
                BODY;                                                                             \
            }                                                                                     \
        } else if (contiguous_) {                                                                 \
            const UT *p_ = (const UT *)(const void *)(row);                                       \
            for (size_t k = 0; k < (w); k++) {                                                    \
                const UT u_ = BSWAP(p_[k]);                                                       \
                T t;                                                                              \
                memcpy(&t, &u_, sizeof t);                                                        \
                BODY;                                                                             \
            }                                                                                     \
        } else {                                                                                  \
            for (size_t k = 0; k < (w); k++) {                                                    \
                T t;                                                                              \
                MD_RAW_AT(T, UT, BSWAP, row, k, (im)->col_stride, (im)->swapped, t);              \
                BODY;                                                                             \
            }                                                                                     \
        }                                                                                         \
    } while (0)

/*
 * Two loaders per dtype: the physical values (NaN for BLANK), and the
 * corrected values of a frame, (physical - sub[k]) - off, with MD_BAD for
 * BLANK, NaN and +-inf and a count of them added to nbad[k].
 */
#define MD_DEFINE_LOADERS(SUFFIX, T, UT, BSWAP, IS_INT)                                           \
    static inline __attribute__((always_inline)) void load_##SUFFIX(                              \
        const md_image *im, size_t y, size_t x0, size_t w, double *dst)                           \
    {                                                                                             \
        const char *row = (const char *)im->data + (ptrdiff_t)y * im->row_stride                  \
                          + (ptrdiff_t)x0 * im->col_stride;                                       \
        const double a = im->bscale, b = im->bzero;                                               \
        const int check_blank = (IS_INT) && im->has_blank;                                        \
        const T blank = (T)im->blank;                                                             \
        MD_FOR_EACH_RAW(T, UT, BSWAP, im, row, w,                                                 \
                        dst[k] = (check_blank && t == blank) ? NAN : a * (double)t + b);          \
    }                                                                                             \
    static inline __attribute__((always_inline)) void correct_##SUFFIX(                           \
        const md_image *im, size_t y, size_t x0, size_t w, const double *restrict sub,            \
        double off, double *restrict dst, double *restrict nbad)                                  \
    {                                                                                             \
        const char *row = (const char *)im->data + (ptrdiff_t)y * im->row_stride                  \
                          + (ptrdiff_t)x0 * im->col_stride;                                       \
        const double a = im->bscale, b = im->bzero;                                               \
        const int check_blank = (IS_INT) && im->has_blank;                                        \
        const T blank = (T)im->blank;                                                             \
        MD_FOR_EACH_RAW(T, UT, BSWAP, im, row, w, {                                               \
            const double v = ((a * (double)t + b) - sub[k]) - off;                                \
            const int bad = (check_blank && t == blank) | !(v - v == 0.0);                        \
            dst[k] = bad ? MD_BAD : v;                                                            \
            nbad[k] += bad ? 1.0 : 0.0;                                                           \
        });                                                                                       \
    }

MD_DEFINE_LOADERS(u8, uint8_t, uint8_t, bswap8, 1)
MD_DEFINE_LOADERS(i16, int16_t, uint16_t, bswap16, 1)
MD_DEFINE_LOADERS(u16, uint16_t, uint16_t, bswap16, 1)
MD_DEFINE_LOADERS(i32, int32_t, uint32_t, bswap32, 1)
MD_DEFINE_LOADERS(i64, int64_t, uint64_t, bswap64, 1)
MD_DEFINE_LOADERS(f32, float, uint32_t, bswap32, 0)
MD_DEFINE_LOADERS(f64, double, uint64_t, bswap64, 0)

/*
 * The loaders of md_load_sum: no bad-value marking (BLANK becomes NaN), and
 * the arithmetic of correct_##SUFFIX with the operations that change no bit
 * left out: AFF picks t + b (a = 1: 1 * t == t) or a * t + b; CORR picks
 * nothing (no bias and off = +0: x - (+0) == x) or (v - sub[k]) - off.  Four
 * frames read alike share one sweep, their values added to the column sums
 * in frame order as one frame at a time would.
 */
#define MD_SUM_STEP(T, UT, BSWAP, SW, AFF, CORR, BL, P, A, B, OFF, BLANKV, D)                     \
    {                                                                                             \
        UT u_ = P[k];                                                                             \
        if (SW) u_ = BSWAP(u_);                                                                   \
        T t_;                                                                                     \
        memcpy(&t_, &u_, sizeof t_);                                                              \
        double v_ = AFF ? A * (double)t_ + B : (double)t_ + B;                                    \
        if (CORR) v_ = (v_ - sub[k]) - OFF;                                                       \
        if (BL) v_ = t_ == BLANKV ? NAN : v_;                                                     \
        D[k] = v_;                                                                                \
        s_ += v_;                                                                                 \
    }

#define MD_DEFINE_SUMMER(SUFFIX, T, UT, BSWAP, IS_INT)                                            \
    static inline __attribute__((always_inline)) void sum1_##SUFFIX##_body(                       \
        const UT *restrict p, int sw, int aff, int corr, int bl, double a, double b, double off,  \
        T blank, const double *restrict sub, double *restrict d, double *restrict sum, size_t w)  \
    {                                                                                             \
        for (size_t k = 0; k < w; k++) {                                                          \
            double s_ = sum[k];                                                                   \
            MD_SUM_STEP(T, UT, BSWAP, sw, aff, corr, bl, p, a, b, off, blank, d)                  \
            sum[k] = s_;                                                                          \
        }                                                                                         \
    }                                                                                             \
    static inline __attribute__((always_inline)) void sum4_##SUFFIX##_body(                       \
        const void *const *p, int sw, int aff, int corr, const double *a, const double *b,       \
        const double *off, const double *restrict sub, double *const *d, double *restrict sum,   \
        size_t w)                                                                                 \
    {                                                                                             \
        const UT *restrict p0 = p[0], *restrict p1 = p[1], *restrict p2 = p[2];                   \
        const UT *restrict p3 = p[3];                                                             \
        double *restrict d0 = d[0], *restrict d1 = d[1], *restrict d2 = d[2];                     \
        double *restrict d3 = d[3];                                                               \
        const double a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];                                  \
        const double b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];                                  \
        const double o0 = off[0], o1 = off[1], o2 = off[2], o3 = off[3];                          \
        for (size_t k = 0; k < w; k++) {                                                          \
            double s_ = sum[k];                                                                   \
            MD_SUM_STEP(T, UT, BSWAP, sw, aff, corr, 0, p0, a0, b0, o0, 0, d0)                    \
            MD_SUM_STEP(T, UT, BSWAP, sw, aff, corr, 0, p1, a1, b1, o1, 0, d1)                    \
            MD_SUM_STEP(T, UT, BSWAP, sw, aff, corr, 0, p2, a2, b2, o2, 0, d2)                    \
            MD_SUM_STEP(T, UT, BSWAP, sw, aff, corr, 0, p3, a3, b3, o3, 0, d3)                    \
            sum[k] = s_;                                                                          \
        }                                                                                         \
    }                                                                                             \
    static inline __attribute__((always_inline)) void sum1_##SUFFIX(                              \
        const md_image *im, const void *row, int mode, double off, const double *sub, double *d,  \
        double *sum, size_t w)                                                                    \
    {                                                                                             \
        const double a = im->bscale, b = im->bzero;                                               \
        const T bv = (T)im->blank;                                                                \
        switch (mode) {                                                                           \
        MD_SUM1_CASES(SUFFIX, 0, 0) MD_SUM1_CASES(SUFFIX, 0, 1)                                   \
        MD_SUM1_CASES(SUFFIX, 1, 0) MD_SUM1_CASES(SUFFIX, 1, 1)                                   \
        }                                                                                         \
    }                                                                                             \
    static inline __attribute__((always_inline)) void sum4_##SUFFIX(                              \
        const md_image *im, const void *const *rows, int mode, const double *off,                 \
        const double *sub, double *const *d, double *sum, size_t w)                               \
    {                                                                                             \
        const double a[4] = {im[0].bscale, im[1].bscale, im[2].bscale, im[3].bscale};             \
        const double b[4] = {im[0].bzero, im[1].bzero, im[2].bzero, im[3].bzero};                 \
        switch (mode) {                                                                           \
        MD_SUM4_CASES(SUFFIX, 0) MD_SUM4_CASES(SUFFIX, 1)                                         \
        }                                                                                         \
    }

/* mode = ((blank * 2 + swapped) * 2 + aff) * 2 + corr */
#define MD_SUM1_CASE(SUFFIX, BL, SW, AFF, CORR)                                                   \
    case ((BL * 2 + SW) * 2 + AFF) * 2 + CORR:                                                    \
        sum1_##SUFFIX##_body(row, SW, AFF, CORR, BL, a, b, off, bv, sub, d, sum, w);              \
        break;
#define MD_SUM1_CASES(SUFFIX, BL, SW)                                                             \
    MD_SUM1_CASE(SUFFIX, BL, SW, 0, 0) MD_SUM1_CASE(SUFFIX, BL, SW, 0, 1)                        \
    MD_SUM1_CASE(SUFFIX, BL, SW, 1, 0) MD_SUM1_CASE(SUFFIX, BL, SW, 1, 1)
#define MD_SUM4_CASE(SUFFIX, SW, AFF, CORR)                                                       \
    case (SW * 2 + AFF) * 2 + CORR:                                                               \
        sum4_##SUFFIX##_body(rows, SW, AFF, CORR, a, b, off, sub, d, sum, w);                     \
        break;
#define MD_SUM4_CASES(SUFFIX, SW)                                                                 \
    MD_SUM4_CASE(SUFFIX, SW, 0, 0) MD_SUM4_CASE(SUFFIX, SW, 0, 1)                                \
    MD_SUM4_CASE(SUFFIX, SW, 1, 0) MD_SUM4_CASE(SUFFIX, SW, 1, 1)

MD_DEFINE_SUMMER(i16, int16_t, uint16_t, bswap16, 1)
MD_DEFINE_SUMMER(u16, uint16_t, uint16_t, bswap16, 1)
MD_DEFINE_SUMMER(f32, float, uint32_t, bswap32, 0)

/* How md_load_sum reads row y from column x0 of a frame: the loader's mode,
 * with the dtype in *dtype, or -1 for the generic path. */
static inline int sum_mode(const md_image *im, size_t y, size_t x0, int corr, const void **row,
                           int *dtype)
{
    const char *r =
        (const char *)im->data + (ptrdiff_t)y * im->row_stride + (ptrdiff_t)x0 * im->col_stride;
    *row = r;
    *dtype = im->dtype;
    if (im->dtype != MD_INT16 && im->dtype != MD_UINT16 && im->dtype != MD_FLOAT32) return -1;
    const size_t size = im->dtype == MD_FLOAT32 ? 4 : 2;
    if (im->col_stride != (long long)size || ((uintptr_t)r & (size - 1)) != 0) return -1;
    const int blank = im->dtype != MD_FLOAT32 && im->has_blank;
    const int aff = im->bscale != 1.0;
    return ((blank * 2 + (im->swapped != 0)) * 2 + aff) * 2 + corr;
}

MD_HOT void md_load_sum(const md_image *ims, size_t count, size_t y, size_t x0, size_t w,
                        const double *sub, int with_bias, const double *offs, double *const *dst,
                        double *sum)
{
    /* x - (+0.0) == x: without a bias (sub holds zeros) and with +0 offsets
     * neither subtraction changes a bit. */
    int corr = with_bias != 0;
    for (size_t j = 0; j < count; j++) corr |= !(offs[j] == 0.0 && !signbit(offs[j]));
    size_t j = 0;
    while (j < count) {
        const void *rows[4];
        int dtype[4];
        const int mode = sum_mode(&ims[j], y, x0, corr, &rows[0], &dtype[0]);
        size_t same = 1;
        if (mode >= 0 && mode < 8)
            while (same < 4 && j + same < count
                   && sum_mode(&ims[j + same], y, x0, corr, &rows[same], &dtype[same]) == mode
                   && dtype[same] == dtype[0])
                same++;
        if (same == 4) {
            switch (dtype[0]) {
            case MD_INT16: sum4_i16(&ims[j], rows, mode, &offs[j], sub, &dst[j], sum, w); break;
            case MD_UINT16: sum4_u16(&ims[j], rows, mode, &offs[j], sub, &dst[j], sum, w); break;
            default: sum4_f32(&ims[j], rows, mode, &offs[j], sub, &dst[j], sum, w); break;
            }
            j += 4;
            continue;
        }
        switch (mode < 0 ? 0 : dtype[0]) {
        case MD_INT16: sum1_i16(&ims[j], rows[0], mode, offs[j], sub, dst[j], sum, w); break;
        case MD_UINT16: sum1_u16(&ims[j], rows[0], mode, offs[j], sub, dst[j], sum, w); break;
        case MD_FLOAT32: sum1_f32(&ims[j], rows[0], mode, offs[j], sub, dst[j], sum, w); break;
        default: { /* any other dtype or layout */
            double *restrict d = dst[j];
            md_load_values(&ims[j], y, x0, w, d);
            for (size_t k = 0; k < w; k++) {
                const double v = corr ? (d[k] - sub[k]) - offs[j] : d[k];
                d[k] = v;
                sum[k] += v;
            }
        }
        }
        j++;
    }
}

MD_HOT void md_load_corrected(const md_image *im, size_t y, size_t x0, size_t w, const double *sub,
                              double off, double *dst, double *nbad)
{
    switch (im->dtype) {
    case MD_UINT8: correct_u8(im, y, x0, w, sub, off, dst, nbad); break;
    case MD_INT16: correct_i16(im, y, x0, w, sub, off, dst, nbad); break;
    case MD_UINT16: correct_u16(im, y, x0, w, sub, off, dst, nbad); break;
    case MD_INT32: correct_i32(im, y, x0, w, sub, off, dst, nbad); break;
    case MD_INT64: correct_i64(im, y, x0, w, sub, off, dst, nbad); break;
    case MD_FLOAT32: correct_f32(im, y, x0, w, sub, off, dst, nbad); break;
    case MD_FLOAT64: correct_f64(im, y, x0, w, sub, off, dst, nbad); break;
    default: break; /* rejected by md_combine's argument checks */
    }
}

MD_HOT void md_load_values(const md_image *im, size_t y, size_t x0, size_t w, double *dst)
{
    switch (im->dtype) {
    case MD_UINT8: load_u8(im, y, x0, w, dst); break;
    case MD_INT16: load_i16(im, y, x0, w, dst); break;
    case MD_UINT16: load_u16(im, y, x0, w, dst); break;
    case MD_INT32: load_i32(im, y, x0, w, dst); break;
    case MD_INT64: load_i64(im, y, x0, w, dst); break;
    case MD_FLOAT32: load_f32(im, y, x0, w, dst); break;
    case MD_FLOAT64: load_f64(im, y, x0, w, dst); break;
    default: break; /* rejected by md_combine's argument checks */
    }
}

void md_load_mask(const md_image *im, size_t y, size_t x0, size_t w, unsigned char *dst)
{
    const char *row =
        (const char *)im->data + (ptrdiff_t)y * im->row_stride + (ptrdiff_t)x0 * im->col_stride;
    const size_t size = md_dtype_size(im->dtype);
    for (size_t k = 0; k < w; k++) {
        const unsigned char *px = (const unsigned char *)row + (ptrdiff_t)k * im->col_stride;
        unsigned char any = 0;
        /* Non-zero in any byte is non-zero in any byte order (integers);
         * float masks: +-0.0 is "good", anything else is "bad". */
        if (im->dtype == MD_FLOAT32 || im->dtype == MD_FLOAT64) {
            double v;
            if (im->dtype == MD_FLOAT32) {
                float f;
                MD_RAW_AT(float, uint32_t, bswap32, row, k, im->col_stride, im->swapped, f);
                v = f;
            } else {
                MD_RAW_AT(double, uint64_t, bswap64, row, k, im->col_stride, im->swapped, v);
            }
            any = v != 0.0;
        } else {
            for (size_t j = 0; j < size; j++) any |= px[j];
        }
        dst[k] = any != 0;
    }
}

/* NAME(pl, y, x0, w, SOURCE): row y, columns x0 .. x0 + w, of a plane of T
 * set to CONVERT(VALUE), VALUE the k-th value written (a double). */
#define MD_DEFINE_WRITER(NAME, T, CONVERT, SOURCE, VALUE)                                         \
    static void NAME(const md_plane *pl, size_t y, size_t x0, size_t w, SOURCE)                   \
    {                                                                                             \
        char *row = (char *)pl->data + (ptrdiff_t)y * pl->row_stride                              \
                    + (ptrdiff_t)x0 * pl->col_stride;                                             \
        if (pl->col_stride == (long long)sizeof(T)) {                                             \
            T *p = (T *)(void *)row;                                                              \
            for (size_t k = 0; k < w; k++) p[k] = CONVERT(VALUE);                                 \
        } else {                                                                                  \
            for (size_t k = 0; k < w; k++) {                                                      \
                T t = CONVERT(VALUE);                                                             \
                memcpy(row + (ptrdiff_t)k * pl->col_stride, &t, sizeof t);                        \
            }                                                                                     \
        }                                                                                         \
    }

/* store_SUFFIX writes src[0..w), fill_SUFFIX w copies of v. */
#define MD_DEFINE_WRITERS(SUFFIX, T, CONVERT)                                                     \
    MD_DEFINE_WRITER(store_##SUFFIX, T, CONVERT, const double *src, src[k])                       \
    MD_DEFINE_WRITER(fill_##SUFFIX, T, CONVERT, double v, v)

/* Counts are small non-negative integers; values/variances are floats. */
#define MD_AS_FLOAT(v) ((float)(v))
#define MD_AS_DOUBLE(v) (v)
#define MD_AS_INT(v) ((v) == (v) ? (v) : 0)

MD_DEFINE_WRITERS(f32, float, MD_AS_FLOAT)
MD_DEFINE_WRITERS(f64, double, MD_AS_DOUBLE)
MD_DEFINE_WRITERS(u8, uint8_t, (uint8_t)MD_AS_INT)
MD_DEFINE_WRITERS(i16, int16_t, (int16_t)MD_AS_INT)
MD_DEFINE_WRITERS(u16, uint16_t, (uint16_t)MD_AS_INT)
MD_DEFINE_WRITERS(i32, int32_t, (int32_t)MD_AS_INT)
MD_DEFINE_WRITERS(i64, int64_t, (int64_t)MD_AS_INT)

/* Call the writer KIND_SUFFIX for a plane's dtype (others are rejected by
 * md_combine's argument checks). */
#define MD_WRITE(KIND, DTYPE, ARGS)                                                               \
    switch (DTYPE) {                                                                              \
    case MD_FLOAT32: KIND##_f32 ARGS; break;                                                      \
    case MD_FLOAT64: KIND##_f64 ARGS; break;                                                      \
    case MD_UINT8: KIND##_u8 ARGS; break;                                                         \
    case MD_INT16: KIND##_i16 ARGS; break;                                                        \
    case MD_UINT16: KIND##_u16 ARGS; break;                                                       \
    case MD_INT32: KIND##_i32 ARGS; break;                                                        \
    case MD_INT64: KIND##_i64 ARGS; break;                                                        \
    default: break;                                                                               \
    }

MD_HOT void md_fill_row(const md_plane *pl, size_t y, size_t x0, size_t w, double v)
{
    MD_WRITE(fill, pl->dtype, (pl, y, x0, w, v))
}

#if MD_LEVELS
#include <immintrin.h>

/* Rows at least this long are written by non-temporal stores (stream_*),
 * which send whole cache lines to memory without first reading them in.  In
 * a tile's row the partial lines at both ends cost more than that saves
 * (measured: the median, which stores by tiles, 5 % slower). */
#define MD_STREAM_MIN 1024

/* p[k] = (float)src[k], k < w: the whole cache lines by non-temporal stores. */
MD_V4 static void stream_f32(float *p, size_t w, const double *src)
{
    size_t k = 0;
    for (; k < w && (uintptr_t)(p + k) % 64 != 0; k++) p[k] = (float)src[k];
    for (; k + 16 <= w; k += 16) {
        const __m256 a = _mm512_cvtpd_ps(_mm512_loadu_pd(src + k));
        const __m256 b = _mm512_cvtpd_ps(_mm512_loadu_pd(src + k + 8));
        _mm512_stream_ps(p + k, _mm512_insertf32x8(_mm512_castps256_ps512(a), b, 1));
    }
    for (; k < w; k++) p[k] = (float)src[k];
}

/* 16 counts as int32, as MD_AS_INT makes them (NaN: 0). */
MD_V4 static inline __m512i counts_i32(const double *src)
{
    __m256i half[2];
    for (int h = 0; h < 2; h++) {
        const __m512d v = _mm512_loadu_pd(src + 8 * h);
        const __m512d good = _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(v, v, _CMP_ORD_Q), v);
        half[h] = _mm512_cvttpd_epi32(good);
    }
    return _mm512_inserti64x4(_mm512_castsi256_si512(half[0]), half[1], 1);
}

/* p[k] = (int16_t)MD_AS_INT(src[k]), k < w, as stream_f32 stores. */
MD_V4 static void stream_i16(int16_t *p, size_t w, const double *src)
{
    size_t k = 0;
    for (; k < w && (uintptr_t)(p + k) % 64 != 0; k++) p[k] = (int16_t)MD_AS_INT(src[k]);
    for (; k + 32 <= w; k += 32) {
        const __m256i a = _mm512_cvtepi32_epi16(counts_i32(src + k));
        const __m256i b = _mm512_cvtepi32_epi16(counts_i32(src + k + 16));
        _mm512_stream_si512((void *)(p + k), _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1));
    }
    for (; k < w; k++) p[k] = (int16_t)MD_AS_INT(src[k]);
}
#endif

MD_HOT void md_store_row(const md_plane *pl, size_t y, size_t x0, size_t w, const double *src)
{
#if MD_LEVELS
    if (w >= MD_STREAM_MIN && pl->col_stride == (long long)md_dtype_size(pl->dtype)
        && __builtin_cpu_supports("x86-64-v4")) {
        char *row = (char *)pl->data + (ptrdiff_t)y * pl->row_stride
                    + (ptrdiff_t)x0 * pl->col_stride;
        if (pl->dtype == MD_FLOAT32) {
            stream_f32((float *)(void *)row, w, src);
            return;
        }
        if (pl->dtype == MD_INT16) {
            stream_i16((int16_t *)(void *)row, w, src);
            return;
        }
    }
#endif
    MD_WRITE(store, pl->dtype, (pl, y, x0, w, src))
}
