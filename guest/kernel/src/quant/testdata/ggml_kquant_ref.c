// Harness for gen_kquant_ref.py: llama.cpp's reference k-quant quantizers,
// dequantizers, quantize_row_q8_K_ref and generic vec_dot, on floats from
// stdin. Build and use: see gen_kquant_ref.py.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "ggml-quants.h"
#include "ggml-common.h"
#include "ggml-impl.h"
float ggml_table_f32_f16[1 << 16];
size_t ggml_row_size(enum ggml_type t, int64_t n) { (void)t; (void)n; abort(); }
size_t ggml_type_size(enum ggml_type t) { (void)t; abort(); }
const char * ggml_type_name(enum ggml_type t) { (void)t; abort(); }
void ggml_vec_dot_q2_K_q8_K_generic(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q3_K_q8_K_generic(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q4_K_q8_K_generic(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q5_K_q8_K_generic(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q6_K_q8_K_generic(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_iq4_xs_q8_K_generic(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_abort(const char * file, int line, const char * fmt, ...) { fprintf(stderr, "abort %s:%d\n", file, line); exit(1); }
// usage: ref TYPE N < (N weights f32, N acts f32); writes: qbytes, deq f32[N], q8k bytes, dot f32
int main(int argc, char ** argv) {
    for (int i = 0; i < (1 << 16); ++i) ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t)i);
    const char * t = argv[1]; int n = atoi(argv[2]);
    float * x = malloc(4*n), * a = malloc(4*n), * d = malloc(4*n);
    fread(x, 4, n, stdin); fread(a, 4, n, stdin);
    int nb = n / 256; size_t bs; void * q = malloc(256 * nb);
    block_q8_K * y = calloc(nb, sizeof(block_q8_K));
    quantize_row_q8_K_ref(a, y, n);
    float s = 0;
    if (!strcmp(t, "q2_K")) { bs = sizeof(block_q2_K); quantize_row_q2_K_ref(x, q, n); dequantize_row_q2_K(q, d, n); ggml_vec_dot_q2_K_q8_K_generic(n, &s, 0, q, 0, y, 0, 1); }
    else if (!strcmp(t, "q3_K")) { bs = sizeof(block_q3_K); quantize_row_q3_K_ref(x, q, n); dequantize_row_q3_K(q, d, n); ggml_vec_dot_q3_K_q8_K_generic(n, &s, 0, q, 0, y, 0, 1); }
    else if (!strcmp(t, "q4_K")) { bs = sizeof(block_q4_K); quantize_row_q4_K_ref(x, q, n); dequantize_row_q4_K(q, d, n); ggml_vec_dot_q4_K_q8_K_generic(n, &s, 0, q, 0, y, 0, 1); }
    else if (!strcmp(t, "q5_K")) { bs = sizeof(block_q5_K); quantize_row_q5_K_ref(x, q, n); dequantize_row_q5_K(q, d, n); ggml_vec_dot_q5_K_q8_K_generic(n, &s, 0, q, 0, y, 0, 1); }
    else if (!strcmp(t, "q6_K")) { bs = sizeof(block_q6_K); quantize_row_q6_K_ref(x, q, n); dequantize_row_q6_K(q, d, n); ggml_vec_dot_q6_K_q8_K_generic(n, &s, 0, q, 0, y, 0, 1); }
    else if (!strcmp(t, "iq4_xs")) { bs = sizeof(block_iq4_xs); quantize_row_iq4_xs_ref(x, q, n); dequantize_row_iq4_xs(q, d, n); ggml_vec_dot_iq4_xs_q8_K_generic(n, &s, 0, q, 0, y, 0, 1); }
    else return 2;
    fwrite(q, bs, nb, stdout); fwrite(d, 4, n, stdout); fwrite(y, sizeof(block_q8_K), nb, stdout); fwrite(&s, 4, 1, stdout);
    return 0;
}
