/* JPEG → RGB8 through the system libjpeg-turbo (the decoder PIL uses), for pipeline/src/jpeg.rs.
 *
 * Two calls per image: sftok_jpeg_open reads the header, sftok_jpeg_read decodes the first `rows`
 * rows of a column range (a loader that needs only part of an image stops below it: the rest is
 * never entropy decoded; columns outside the range skip IDCT and colour conversion) and frees the
 * handle. libjpeg reports fatal errors by longjmp; every entry point sets
 * its own jump target, so no longjmp ever crosses a Rust frame.
 *
 * Settings are libjpeg's defaults, as in PIL: islow IDCT, fancy upsampling, no scaling. The
 * output is therefore bit-identical to PIL's `Image.open(f).convert("RGB")` for YCbCr, RGB and
 * grayscale JPEGs; CMYK/YCCK and non-8-bit files are left to the caller (SFTOK_JPEG_UNSUPPORTED).
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#define SFTOK_JPEG_OK 0
#define SFTOK_JPEG_UNSUPPORTED 1
#define SFTOK_JPEG_ERROR (-1)

struct sftok_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int truncated; /* libjpeg only warns on premature end of data and pads with gray */
};

typedef struct sftok_jpeg {
    struct jpeg_decompress_struct cinfo;
    struct sftok_error err;
} sftok_jpeg;

static void on_error(j_common_ptr cinfo) {
    struct sftok_error *err = (struct sftok_error *)cinfo->err;
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    /* Warnings (level -1) about recoverable corruption are ignored, as PIL does; a premature
     * end of data is remembered: the image would be padded, so the caller rejects it. */
    struct sftok_error *err = (struct sftok_error *)cinfo->err;
    if (level < 0 && err->pub.msg_code == JWRN_JPEG_EOF) err->truncated = 1;
}

static void message(sftok_jpeg *h, char *msg, size_t cap) {
    if (cap == 0) return;
    char buf[JMSG_LENGTH_MAX];
    h->err.pub.format_message((j_common_ptr)&h->cinfo, buf);
    snprintf(msg, cap, "%s", buf);
}

static void release(sftok_jpeg *h) {
    jpeg_destroy_decompress(&h->cinfo);
    free(h);
}

/* Reads the header. On SFTOK_JPEG_OK, *out is a handle for sftok_jpeg_read (or sftok_jpeg_free). */
int sftok_jpeg_open(const uint8_t *data, size_t len, sftok_jpeg **out, uint32_t *width, uint32_t *height, char *msg, size_t cap) {
    *out = NULL;
    sftok_jpeg *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(msg, cap, "out of memory");
        return SFTOK_JPEG_ERROR;
    }
    h->cinfo.err = jpeg_std_error(&h->err.pub);
    h->err.pub.error_exit = on_error;
    h->err.pub.emit_message = on_message;
    if (setjmp(h->err.jump)) {
        message(h, msg, cap);
        release(h);
        return SFTOK_JPEG_ERROR;
    }
    jpeg_create_decompress(&h->cinfo);
    jpeg_mem_src(&h->cinfo, data, (unsigned long)len);
    jpeg_read_header(&h->cinfo, TRUE);
    J_COLOR_SPACE cs = h->cinfo.jpeg_color_space;
    if (h->cinfo.data_precision != 8 || (cs != JCS_YCbCr && cs != JCS_RGB && cs != JCS_GRAYSCALE)) {
        release(h);
        return SFTOK_JPEG_UNSUPPORTED;
    }
    h->cinfo.out_color_space = JCS_RGB;
    *width = h->cinfo.image_width;
    *height = h->cinfo.image_height;
    *out = h;
    return SFTOK_JPEG_OK;
}

/* Decodes the first `rows` rows (clamped to the height), at least columns [x0, x1), into
 * `pixels`, laid out as the whole image: row r at r · stride, column c at c · 3. A narrower column
 * range goes through jpeg_crop_scanline, which widens it to iMCU boundaries and treats its edges
 * as image edges for chroma upsampling: callers keep a few columns of margin. Columns outside the
 * decoded range are left untouched. Frees the handle whatever the outcome. */
static int read_clamped(sftok_jpeg *h, const uint32_t x0, const uint32_t x1, const uint32_t rows, uint8_t *pixels, size_t stride, char *msg, size_t cap);

int sftok_jpeg_read(sftok_jpeg *h, uint32_t x0, uint32_t x1, uint32_t rows, uint8_t *pixels, size_t stride, char *msg, size_t cap) {
    /* No scaling: the output is image_height rows. */
    uint32_t width = h->cinfo.image_width;
    if (rows > h->cinfo.image_height) rows = h->cinfo.image_height;
    if (x1 > width) x1 = width;
    if (x0 >= x1) x0 = 0, x1 = width;
    return read_clamped(h, x0, x1, rows, pixels, stride, msg, cap);
}

/* Separate from the clamping above: nothing set before setjmp changes after it. */
static int read_clamped(sftok_jpeg *h, const uint32_t x0, const uint32_t x1, const uint32_t rows, uint8_t *pixels, size_t stride, char *msg, size_t cap) {
    uint32_t width = h->cinfo.image_width;
    if (setjmp(h->err.jump)) {
        message(h, msg, cap);
        release(h);
        return SFTOK_JPEG_ERROR;
    }
    jpeg_start_decompress(&h->cinfo);
    JDIMENSION left = 0;
    if (x0 > 0 || x1 < width) {
        JDIMENSION span = x1 - x0;
        left = x0;
        jpeg_crop_scanline(&h->cinfo, &left, &span);
    }
    while (h->cinfo.output_scanline < rows && !h->err.truncated) {
        JSAMPROW row = pixels + (size_t)h->cinfo.output_scanline * stride + (size_t)left * 3;
        jpeg_read_scanlines(&h->cinfo, &row, 1);
    }
    if (h->err.truncated) {
        snprintf(msg, cap, "the JPEG data end early (truncated file)");
        release(h);
        return SFTOK_JPEG_ERROR;
    }
    /* The rest of the file is not needed: abort rather than decode it to reach the end. */
    jpeg_abort_decompress(&h->cinfo);
    release(h);
    return SFTOK_JPEG_OK;
}

/* Entropy decoding only (jpeg_read_coefficients: Huffman, no IDCT, upsampling or colour
 * conversion), then frees the handle: the floor under any pixel decode of the file, for the
 * loader benchmark. */
int sftok_jpeg_entropy_only(sftok_jpeg *h, char *msg, size_t cap) {
    if (setjmp(h->err.jump)) {
        message(h, msg, cap);
        release(h);
        return SFTOK_JPEG_ERROR;
    }
    jpeg_read_coefficients(&h->cinfo);
    jpeg_finish_decompress(&h->cinfo);
    release(h);
    return SFTOK_JPEG_OK;
}

void sftok_jpeg_free(sftok_jpeg *h) {
    if (h) release(h);
}
