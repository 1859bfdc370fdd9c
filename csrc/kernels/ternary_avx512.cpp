#include "kernels/ternary_impl.h"
namespace bllama {
const KernelOps* avx512_ops() { return nullptr; }
}  // namespace bllama
