// GGUF ternary encoders for tests (the engine only decodes): codes in {-1, 0, 1}, row-major [rows, cols],
// cols % 256 == 0, into the bytes a TQ2_0 / TQ1_0 / I2_S tensor holds in a file. Header-only; tests only.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/half.h"

namespace testutil {

// TQ2_0 / TQ1_0 with d = scale in every block.
inline std::vector<uint8_t> encode_tq2_0(const std::vector<int8_t>& codes, int64_t rows, int64_t cols, float scale) {
    std::vector<uint8_t> out;
    const uint16_t d = bllama::f32_to_f16(scale);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < cols / 256; ++b) {
            const int8_t* x = codes.data() + r * cols + b * 256;
            for (int half = 0; half < 2; ++half)
                for (int m = 0; m < 32; ++m) {
                    uint8_t q = 0;
                    for (int n = 0; n < 4; ++n) q |= static_cast<uint8_t>((x[half * 128 + m + 32 * n] + 1) << (2 * n));
                    out.push_back(q);
                }
            out.push_back(static_cast<uint8_t>(d & 0xff));
            out.push_back(static_cast<uint8_t>(d >> 8));
        }
    return out;
}

// Five trits per byte as a fixed-point fraction of 243 (ggml's TQ1_0): 32 bytes covering 160 values,
// 16 bytes covering 80, then 4 bytes of 4 trits covering the last 16.
inline uint8_t pack_trits(const int8_t* x, int n, int stride, bool pad_to_five) {
    uint32_t q = 0;
    for (int i = 0; i < n; ++i) q = q * 3 + static_cast<uint32_t>(x[i * stride] + 1);
    if (pad_to_five) q *= 3;
    return static_cast<uint8_t>((q * 256 + 242) / 243);
}

inline std::vector<uint8_t> encode_tq1_0(const std::vector<int8_t>& codes, int64_t rows, int64_t cols, float scale) {
    std::vector<uint8_t> out;
    const uint16_t d = bllama::f32_to_f16(scale);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < cols / 256; ++b) {
            const int8_t* x = codes.data() + r * cols + b * 256;
            for (int m = 0; m < 32; ++m) out.push_back(pack_trits(x + m, 5, 32, false));
            for (int m = 0; m < 16; ++m) out.push_back(pack_trits(x + 160 + m, 5, 16, false));
            for (int j = 0; j < 4; ++j) out.push_back(pack_trits(x + 240 + j, 4, 4, true));
            out.push_back(static_cast<uint8_t>(d & 0xff));
            out.push_back(static_cast<uint8_t>(d >> 8));
        }
    return out;
}

// bitnet.cpp's I2_S: 128 values per 32 bytes (value j of a 128-block at byte j % 32, shift 6 - 2 (j / 32), as
// q + 1), then the tensor's fp32 scale and zero padding to a 32-byte tail.
inline std::vector<uint8_t> encode_i2_s(const std::vector<int8_t>& codes, float scale) {
    std::vector<uint8_t> out(codes.size() / 4 + 32, 0);
    for (size_t i = 0; i < codes.size(); ++i)
        out[i / 128 * 32 + i % 32] |= static_cast<uint8_t>((codes[i] + 1) << (6 - 2 * (i % 128 / 32)));
    std::memcpy(&out[codes.size() / 4], &scale, 4);
    return out;
}

}  // namespace testutil
