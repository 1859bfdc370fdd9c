// What the CPU and the OS together let us run. Read once (x86: cpuid + xgetbv; aarch64: the kernel's hwcaps on
// Linux/Android, sysctl on macOS) and cached.
#pragma once

namespace bllama {

struct CpuFeatures {
    bool avx2 = false;         // AVX2 + FMA + F16C, with the OS saving YMM state
    bool avx512_vnni = false;  // AVX-512 F/BW/VL/DQ + VNNI, with the OS saving ZMM and opmask state
    bool avx512_vbmi = false;  // + VBMI (vpermi2b: 128-byte table lookups; the base-3 prompt GEMM's expansion)
    bool neon = false;         // aarch64 Advanced SIMD (fp16 conversions included: they are armv8.0)
    bool dotprod = false;      // + sdot/udot (FEAT_DotProd, Armv8.2)
    bool i8mm = false;         // + smmla (FEAT_I8MM, Armv8.6): the i8mm kind's prompt GEMM
};

const CpuFeatures& cpu_features();

}  // namespace bllama
