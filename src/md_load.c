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

#define MD_DEFINE_STORER(NAME, T, CONVERT)                                                        \
    static void NAME(const md_plane *pl, size_t y, size_t x0, size_t w, const double *src)        \
    {                                                                                             \
        char *row = (char *)pl->data + (ptrdiff_t)y * pl->row_stride                              \
                    + (ptrdiff_t)x0 * pl->col_stride;                                             \
        if (pl->col_stride == (long long)sizeof(T)) {                                             \
            T *p = (T *)(void *)row;                                                              \
            for (size_t k = 0; k < w; k++) p[k] = CONVERT(src[k]);                                \
        } else {                                                                                  \
            for (size_t k = 0; k < w; k++) {                                                      \
                T t = CONVERT(src[k]);                                                            \
                memcpy(row + (ptrdiff_t)k * pl->col_stride, &t, sizeof t);                        \
            }                                                                                     \
        }                                                                                         \
    }

/* Counts are small non-negative integers; values/variances are floats. */
#define MD_AS_FLOAT(v) ((float)(v))
#define MD_AS_DOUBLE(v) (v)
#define MD_AS_INT(v) ((v) == (v) ? (v) : 0)

MD_DEFINE_STORER(store_f32, float, MD_AS_FLOAT)
MD_DEFINE_STORER(store_f64, double, MD_AS_DOUBLE)
MD_DEFINE_STORER(store_u8, uint8_t, (uint8_t)MD_AS_INT)
MD_DEFINE_STORER(store_i16, int16_t, (int16_t)MD_AS_INT)
MD_DEFINE_STORER(store_u16, uint16_t, (uint16_t)MD_AS_INT)
MD_DEFINE_STORER(store_i32, int32_t, (int32_t)MD_AS_INT)
MD_DEFINE_STORER(store_i64, int64_t, (int64_t)MD_AS_INT)

MD_HOT void md_store_row(const md_plane *pl, size_t y, size_t x0, size_t w, const double *src)
{
    switch (pl->dtype) {
    case MD_FLOAT32: store_f32(pl, y, x0, w, src); break;
    case MD_FLOAT64: store_f64(pl, y, x0, w, src); break;
    case MD_UINT8: store_u8(pl, y, x0, w, src); break;
    case MD_INT16: store_i16(pl, y, x0, w, src); break;
    case MD_UINT16: store_u16(pl, y, x0, w, src); break;
    case MD_INT32: store_i32(pl, y, x0, w, src); break;
    case MD_INT64: store_i64(pl, y, x0, w, src); break;
    default: break; /* rejected by md_combine's argument checks */
    }
}
