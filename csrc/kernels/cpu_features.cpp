#include "kernels/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#elif defined(__aarch64__) && (defined(__linux__) || defined(__ANDROID__))
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace bllama {

namespace {

#if defined(__x86_64__) || defined(__i386__)
// xgetbv via asm: the _xgetbv intrinsic needs -mxsave, which the base build must not assume.
unsigned long long read_xcr0() {
    unsigned int lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (static_cast<unsigned long long>(hi) << 32) | lo;
}

CpuFeatures detect() {
    CpuFeatures f;
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
    const bool fma = ecx & (1u << 12), osxsave = ecx & (1u << 27), avx = ecx & (1u << 28),
               f16c = ecx & (1u << 29);
    // A CPU can have AVX while the OS (or hypervisor) does not save the wide registers on context
    // switch; using them then corrupts state silently, so cpuid alone is not enough.
    if (!osxsave || !avx) return f;
    const unsigned long long xcr0 = read_xcr0();
    const bool os_ymm = (xcr0 & 0x6) == 0x6;      // SSE + AVX state
    const bool os_zmm = (xcr0 & 0xe6) == 0xe6;    // + opmask, ZMM_Hi256, Hi16_ZMM
    if (__get_cpuid_max(0, nullptr) < 7) return f;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    const bool avx2 = ebx & (1u << 5), avx512f = ebx & (1u << 16), avx512dq = ebx & (1u << 17),
               avx512bw = ebx & (1u << 30), avx512vl = ebx & (1u << 31), vbmi = ecx & (1u << 1),
               vnni = ecx & (1u << 11);
    f.avx2 = os_ymm && avx2 && fma && f16c;
    f.avx512_vnni = f.avx2 && os_zmm && avx512f && avx512dq && avx512bw && avx512vl && vnni;
    f.avx512_vbmi = f.avx512_vnni && vbmi;
    return f;
}
#elif defined(__aarch64__)
#if defined(__linux__) || defined(__ANDROID__)
// The kernel reports what the core can run (and what qemu-user emulates for its -cpu model). The bit
// numbers are the Linux uapi's (asm/hwcap.h), spelled out for libcs whose headers predate them.
CpuFeatures detect() {
    constexpr unsigned long kHwcapAsimd = 1ul << 1, kHwcapAsimdDp = 1ul << 20, kHwcap2I8mm = 1ul << 13;
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    CpuFeatures f;
    f.neon = hw & kHwcapAsimd;
    f.dotprod = f.neon && (hw & kHwcapAsimdDp);
    f.i8mm = f.dotprod && (hw2 & kHwcap2I8mm);
    return f;
}
#elif defined(__APPLE__)
bool sysctl_flag(const char* name) {
    int v = 0;
    size_t n = sizeof v;
    return sysctlbyname(name, &v, &n, nullptr, 0) == 0 && v != 0;
}
// Every Apple arm64 core has NEON; M1 and later (and A11+) report dot product, M2 and later i8mm.
CpuFeatures detect() {
    CpuFeatures f;
    f.neon = true;
    f.dotprod = sysctl_flag("hw.optional.arm.FEAT_DotProd");
    f.i8mm = f.dotprod && sysctl_flag("hw.optional.arm.FEAT_I8MM");
    return f;
}
#else
// No run-time probe on this OS: what the compiler was told the target has (-march / -mcpu).
CpuFeatures detect() {
    CpuFeatures f;
    f.neon = true;
#ifdef __ARM_FEATURE_DOTPROD
    f.dotprod = true;
#endif
#ifdef __ARM_FEATURE_MATMUL_INT8
    f.i8mm = f.dotprod;
#endif
    return f;
}
#endif
#else
CpuFeatures detect() { return {}; }
#endif

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = detect();
    return f;
}

}  // namespace bllama
