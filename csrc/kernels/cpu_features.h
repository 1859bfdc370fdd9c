// What the CPU and the OS together let us run. Read once (cpuid + xgetbv) and cached.
#pragma once

namespace bllama {

struct CpuFeatures {
    bool avx2 = false;         // AVX2 + FMA + F16C, with the OS saving YMM state
    bool avx512_vnni = false;  // AVX-512 F/BW/VL/DQ + VNNI, with the OS saving ZMM and opmask state
};

const CpuFeatures& cpu_features();

}  // namespace bllama
