#include "kernels/ternary_impl.h"
namespace bllama {
const KernelOps* avx2_ops() { return nullptr; }
}  // namespace bllama
