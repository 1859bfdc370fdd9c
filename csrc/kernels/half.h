// IEEE binary16 <-> binary32 conversions in portable C++ (the base build targets plain x86-64, so no
// F16C here). Used off the hot path: embedding row lookup, converting f32 files at load, tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace bllama {

inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        // Zero or subnormal: mant * 2^-24 is exact in fp32.
        const float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    uint32_t bits;
    if (exp == 31)
        bits = sign | 0x7f800000u | (mant << 13);  // inf / nan (payload kept)
    else
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Round to nearest, ties to even (what numpy's astype(float16) does).
inline uint16_t f32_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) return sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u);
    if (absx >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
    if (absx < 0x38800000u) {                         // below 2^-14: half subnormal (or zero)
        float v;
        std::memcpy(&v, &absx, sizeof v);
        // v * 2^24 < 1024 is exact; nearbyint rounds half to even in the default mode.
        return sign | static_cast<uint16_t>(std::nearbyint(v * 16777216.0f));
    }
    const uint32_t mant = absx & 0x7fffffu;
    uint32_t h = (((absx >> 23) - 112u) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: correct
    return sign | static_cast<uint16_t>(h);
}

}  // namespace bllama
