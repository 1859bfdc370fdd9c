// The end-to-end check across builds (tests/run_arm.sh): the logits of small random models, written as raw
// fp32 so that an aarch64 build under qemu can be compared byte for byte with the x86 scalar reference.
//
//   logits_dump write <dir> <out.bin>    write the models into <dir> (the same bytes on every machine), run
//                                        them with the kernel kind BLLAMA_KERNEL picks, append every logit
//   logits_dump compare <a.bin> <b.bin> <tol>   exit 0 when max |a - b| <= tol * max |b| (tol 0: same bytes)
//
// Each model runs a 12-token prompt in one chunk (the GEMM paths, prompt tiles of the f16 head) and then 4
// decode steps (the GEMV paths), with the f16 head and with the int8 head; one model is SiLU + TQ2_0, the
// other ReLU^2 + TQ1_0 with grouped KV heads.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cpu/model.h"
#include "random_gguf.h"

using namespace bllama;

namespace {

// name, vocab, dim, layers, heads, kv_heads, ffn, context, relu2, theta: head size 64 so the SIMD attention
// runs (it needs a multiple of 8), dims multiples of 256 (ternary blocks).
const bench::Shape kTiny[] = {
    {"tiny-silu", 300, 256, 2, 4, 4, 512, 32, false, 10000.0f},
    {"tiny-relu2", 260, 512, 2, 8, 2, 768, 32, true, 500000.0f},
};

int write_logits(const std::string& dir, const std::string& out_path) {
    std::FILE* out = std::fopen(out_path.c_str(), "wb");
    if (!out) return std::perror(out_path.c_str()), 2;
    for (const bench::Shape& s : kTiny) {
        const bool tq1 = s.relu2;
        const std::string path = dir + "/" + s.name + ".gguf";
        bench::write_model(s, tq1, path);
        for (HeadType head : {HeadType::F16, HeadType::Q8, HeadType::Q4}) {
            LoadOptions o;
            o.threads = 1;
            o.head = head;
            auto m = Model::load(path, o);
            const int64_t V = m->config().vocab;
            std::vector<int32_t> prompt(12);
            for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 37 + 5) % V);
            std::vector<float> logits(prompt.size() * V);
            m->forward(prompt.data(), static_cast<int64_t>(prompt.size()), 0, logits.data(), true);
            std::fwrite(logits.data(), 4, logits.size(), out);
            for (int64_t step = 0; step < 4; ++step) {
                const int32_t tok = static_cast<int32_t>((step * 53 + 11) % V);
                m->forward(&tok, 1, static_cast<int64_t>(prompt.size()) + step, logits.data(), false);
                std::fwrite(logits.data(), 4, static_cast<size_t>(V), out);
            }
            std::printf("%s head %s kernel %s: %lld logits\n", s.name, head_type_name(head), kernel_name(m->kernel()),
                        static_cast<long long>(V * (prompt.size() + 4)));
        }
    }
    return std::fclose(out) == 0 ? 0 : 2;
}

std::vector<float> read_floats(const char* path) {
    std::vector<float> v;
    if (std::FILE* f = std::fopen(path, "rb")) {
        float x;
        while (std::fread(&x, 4, 1, f) == 1) v.push_back(x);
        std::fclose(f);
    }
    return v;
}

int compare(const char* a_path, const char* b_path, double tol) {
    const std::vector<float> a = read_floats(a_path), b = read_floats(b_path);
    if (a.empty() || a.size() != b.size()) {
        std::fprintf(stderr, "logits_dump: %s has %zu logits, %s %zu\n", a_path, a.size(), b_path, b.size());
        return 1;
    }
    double max_diff = 0, max_ref = 0;
    size_t differ = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        differ += std::memcmp(&a[i], &b[i], 4) != 0;
        max_diff = std::fmax(max_diff, std::fabs(double(a[i]) - b[i]));
        max_ref = std::fmax(max_ref, std::fabs(double(b[i])));
    }
    const bool ok = tol == 0 ? differ == 0 : max_diff <= tol * max_ref && std::isfinite(max_diff);
    std::printf("%s vs %s: %zu logits, %zu differ in bits, max |diff| %.3g (max |logit| %.3g, tolerance %s): %s\n",
                a_path, b_path, a.size(), differ, max_diff, max_ref, tol == 0 ? "same bytes" : std::to_string(tol).c_str(),
                ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "write" && argc == 4) return write_logits(argv[2], argv[3]);
    if (cmd == "compare" && argc == 5) return compare(argv[2], argv[3], std::atof(argv[4]));
    std::fprintf(stderr, "usage: %s write <dir> <out.bin> | compare <a.bin> <b.bin> <tol>\n", argv[0]);
    return 2;
}
