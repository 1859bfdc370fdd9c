// One KernelTable per kernel kind, the choice of kind (once, from the feature probe and BLLAMA_KERNEL), and
// the checked entry points of the families: each validates its arguments, then makes one indirect call.
#include "kernels/dispatch.h"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "kernels/cpu_features.h"
#include "kernels/head_f16.h"
#include "kernels/head_q4.h"
#include "kernels/head_q8.h"
#include "kernels/pack.h"
#include "kernels/ref.h"
#include "kernels/simd.h"
#include "kernels/ternary.h"

namespace bllama {

namespace {

// attend_group_f16 for kinds without a grouped kernel: one attend_f16 per head.
template <void (*Attend)(const float*, const uint16_t*, const uint16_t*, int64_t, int64_t, int64_t, float, float*,
                         float*)>
void attend_heads(const float* q, int64_t heads, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t len,
                  int64_t hd, float scale, float* scores, float* out) {
    for (int64_t h = 0; h < heads; ++h) Attend(q + h * hd, k, v, stride, len, hd, scale, scores, out + h * hd);
}
// attend_many_f32 for kinds without a kernel for it: one attend_f32 per vector.
template <void (*Attend)(const float*, const float*, const float*, int64_t, int64_t, int64_t, float, float*, float*)>
void attend_each(const float* const* q, const int64_t* len, int64_t n, const float* k, const float* v, int64_t stride,
                 int64_t hd, float scale, float* scores, float* const* out) {
    for (int64_t i = 0; i < n; ++i) Attend(q[i], k, v, stride, len[i], hd, scale, scores, out[i]);
}

const KernelTable kScalar = {quantize_rows_ref,       ternary_matmul_ref, f16_matmul_ref, q8_head_matmul_ref,
                             attend_f32_ref,     attend_f16_ref,     to_f16_ref,         q4_head_matmul_ref,
                             ternary_matmul_ref, silu_mul_ref, to_f32_ref, attend_heads<attend_f16_ref>,
                             attend_each<attend_f32_ref>};
#ifdef BLLAMA_KERNELS_X86
const KernelTable kAvx2 = {quantize_rows_avx2,   ternary_matmul_avx2, f16_matmul_avx2, q8_head_matmul_avx2,
                           attend_f32_avx2, attend_f16_avx2,     to_f16_avx2,     q4_head_matmul_avx2,
                           ternary1_matmul_avx2, silu_mul_avx2, to_f32_avx2, attend_group_f16_avx2,
                           attend_many_f32_avx2};
const KernelTable kAvx512 = {quantize_rows_avx512,   ternary_matmul_avx512, f16_matmul_avx512, q8_head_matmul_avx512,
                             attend_f32_avx512, attend_f16_avx512,     to_f16_avx512,     q4_head_matmul_avx512,
                             ternary1_matmul_avx512, silu_mul_avx512, to_f32_avx512,
                             attend_heads<attend_f16_avx512>, attend_each<attend_f32_avx512>};
#endif
#ifdef BLLAMA_KERNELS_ARM
// The f16 head and attention are float work that sdot does not help: the dotprod kind shares NEON's.
const KernelTable kNeon = {quantize_rows_neon,   ternary_matmul_neon, f16_matmul_neon, q8_head_matmul_neon,
                           attend_f32_neon, attend_f16_neon,     to_f16_neon,     q4_head_matmul_neon,
                           ternary1_matmul_neon, silu_mul_ref, to_f32_neon, attend_heads<attend_f16_neon>,
                           attend_each<attend_f32_neon>};
const KernelTable kDotprod = {quantize_rows_neon,   ternary_matmul_dotprod, f16_matmul_neon, q8_head_matmul_dotprod,
                              attend_f32_neon, attend_f16_neon,        to_f16_neon,     q4_head_matmul_dotprod,
                              ternary1_matmul_dotprod, silu_mul_ref, to_f32_neon, attend_heads<attend_f16_neon>,
                              attend_each<attend_f32_neon>};
// smmla only pays where several tokens share the weights: everything but the ternary GEMM is dotprod's.
const KernelTable kI8mm = {quantize_rows_neon,   ternary_matmul_i8mm, f16_matmul_neon, q8_head_matmul_dotprod,
                           attend_f32_neon, attend_f16_neon,     to_f16_neon,     q4_head_matmul_dotprod,
                           ternary1_matmul_i8mm, silu_mul_ref, to_f32_neon, attend_heads<attend_f16_neon>,
                           attend_each<attend_f32_neon>};
#endif

// nullptr when this CPU (or this build) cannot run the kind.
const KernelTable* find_table(KernelKind kind) {
    switch (kind) {
        case KernelKind::Scalar: return &kScalar;
#ifdef BLLAMA_KERNELS_X86
        case KernelKind::Avx2: return cpu_features().avx2 ? &kAvx2 : nullptr;
        case KernelKind::Avx512Vnni: return cpu_features().avx512_vnni ? &kAvx512 : nullptr;
#endif
#ifdef BLLAMA_KERNELS_ARM
        case KernelKind::Neon: return cpu_features().neon ? &kNeon : nullptr;
        case KernelKind::Dotprod: return cpu_features().dotprod ? &kDotprod : nullptr;
        case KernelKind::I8mm: return cpu_features().i8mm ? &kI8mm : nullptr;
#endif
        default: return nullptr;
    }
    return nullptr;
}

const KernelTable& table_for(KernelKind kind, const char* who) {
    const KernelTable* t = find_table(kind);
    if (!t) throw std::invalid_argument(std::string(who) + ": kernel '" + kernel_name(kind) +
                                        "' is not supported on this CPU/build");
    return *t;
}

KernelKind detect_best() {
    KernelKind best = KernelKind::Scalar;
    for (KernelKind k : kAllKernelKinds)  // later kinds of one architecture are the faster ones
        if (kernel_supported(k)) best = k;
    if (const char* env = std::getenv("BLLAMA_KERNEL")) {
        KernelKind want = best;
        if (!kernel_from_name(env, &want))
            std::fprintf(stderr,
                         "bllama: BLLAMA_KERNEL=%s not recognised (scalar|avx2|avx512|neon|dotprod|i8mm), using %s\n",
                         env, kernel_name(best));
        else if (!kernel_supported(want))
            std::fprintf(stderr, "bllama: BLLAMA_KERNEL=%s is not supported here, using %s\n", env,
                         kernel_name(best));
        else
            best = want;
    }
    return best;
}

}  // namespace

KernelKind best_kernel() {
    static const KernelKind k = detect_best();
    return k;
}

bool kernel_supported(KernelKind kind) { return find_table(kind) != nullptr; }

const char* kernel_name(KernelKind kind) {
    switch (kind) {
        case KernelKind::Scalar: return "scalar";
        case KernelKind::Avx2: return "avx2";
        case KernelKind::Avx512Vnni: return "avx512vnni";
        case KernelKind::Neon: return "neon";
        case KernelKind::Dotprod: return "dotprod";
        case KernelKind::I8mm: return "i8mm";
    }
    return "?";
}

bool kernel_from_name(const char* name, KernelKind* kind) {
    const std::string n(name);
    if (n == "avx512") {  // the short name BLLAMA_KERNEL has always taken
        *kind = KernelKind::Avx512Vnni;
        return true;
    }
    for (KernelKind k : kAllKernelKinds)
        if (n == kernel_name(k)) {
            *kind = k;
            return true;
        }
    return false;
}

const KernelTable& kernel_table(KernelKind kind) { return table_for(kind, "bllama"); }

// ---- entry points --------------------------------------------------------------------------------

void quantize_acts(const float* x, int64_t n_tokens, int64_t cols, QuantizedActs& out, KernelKind kind) {
    if (n_tokens < 0 || cols <= 0) throw std::invalid_argument("quantize_acts: bad shape");
    resize_acts(out, n_tokens, cols);
    kernel_table(kind).quantize(x, 0, n_tokens, cols, out);
}

void quantize_acts_rows(const float* x, int64_t t0, int64_t t1, int64_t cols, QuantizedActs& out, KernelKind kind) {
    if (cols != out.cols || t0 < 0 || t0 > t1 || t1 > out.n_tokens)
        throw std::invalid_argument("quantize_acts_rows: rows or cols outside the sized activations");
    kernel_table(kind).quantize(x, t0, t1, cols, out);
}

void ternary_matmul(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t row_begin,
                    int64_t row_end, KernelKind kind) {
    if (x.cols != w.cols()) throw std::invalid_argument("ternary_matmul: activation cols != weight cols");
    if (row_begin < 0 || row_end > w.rows() || row_begin > row_end)
        throw std::invalid_argument("ternary_matmul: bad row range");
    if (x.n_tokens > 1 && ldy < row_end) throw std::invalid_argument("ternary_matmul: ldy < row_end");
    if (row_begin == row_end || x.n_tokens == 0) return;
    const KernelTable& t = kernel_table(kind);
    if (w.layout() == TernaryLayout::Base3)
        (t.ternary_matmul_base3 ? t.ternary_matmul_base3 : ternary_matmul_ref)(w, x, y, ldy, row_begin, row_end);
    else
        t.ternary_matmul(w, x, y, ldy, row_begin, row_end);
}

bool has_base3_kernel(KernelKind kind) {
    const KernelTable* t = find_table(kind);
    return t && t != &kScalar && t->ternary_matmul_base3;
}

void f16_matmul(const uint16_t* w, int64_t cols, const float* x, int64_t n_tokens, float* y, int64_t ldy,
                int64_t row_begin, int64_t row_end, KernelKind kind) {
    if (cols <= 0 || row_begin < 0 || row_begin > row_end) throw std::invalid_argument("f16_matmul: bad shape");
    if (row_begin == row_end || n_tokens <= 0) return;
    kernel_table(kind).f16_matmul(w, cols, x, n_tokens, y, ldy, row_begin, row_end);
}

void q8_head_matmul(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t row_begin,
                    int64_t row_end, KernelKind kind) {
    if (x.cols != w.cols()) throw std::invalid_argument("q8_head_matmul: activation cols != head cols");
    if (row_begin < 0 || row_end > w.rows() || row_begin > row_end)
        throw std::invalid_argument("q8_head_matmul: bad row range");
    if (x.n_tokens > 1 && ldy < row_end) throw std::invalid_argument("q8_head_matmul: ldy < row_end");
    const KernelTable& t = table_for(kind, "q8_head_matmul");  // before the empty-range return, as always
    if (row_begin == row_end || x.n_tokens == 0) return;
    t.q8_head_matmul(w, x, y, ldy, row_begin, row_end);
}

void q4_head_matmul(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t row_begin,
                    int64_t row_end, KernelKind kind) {
    if (x.cols != w.cols()) throw std::invalid_argument("q4_head_matmul: activation cols != head cols");
    if (row_begin < 0 || row_end > w.rows() || row_begin > row_end)
        throw std::invalid_argument("q4_head_matmul: bad row range");
    if (x.n_tokens > 1 && ldy < row_end) throw std::invalid_argument("q4_head_matmul: ldy < row_end");
    const KernelTable& t = table_for(kind, "q4_head_matmul");
    if (row_begin == row_end || x.n_tokens == 0) return;
    t.q4_head_matmul(w, x, y, ldy, row_begin, row_end);
}

}  // namespace bllama
