// GGUF v2/v3 reader over a memory mapping. Every count, length, type, dimension and offset is
// checked against the bytes that remain before it is used, so a corrupt or hostile file ends in a
// GgufError (with what, which key/tensor, and the file offset) rather than a crash, a hang, or a
// huge allocation. Values stay in the mapping; accessors decode them on demand.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/mapped_file.h"

namespace bllama {

class GgufError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

enum class GgufType : uint32_t {
    U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
    STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);
size_t gguf_scalar_size(GgufType t);  // 0 for STRING / ARRAY

// ggml tensor types this reader knows the block layout of (others are rejected).
enum class GgmlType : uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35,
    I2_S = 36,  // bitnet.cpp's 2-bit ternary type (an id upstream ggml left unassigned; kernels/ternary.h)
};
struct GgmlTypeInfo {
    const char* name;
    int64_t block_elems;  // values per block
    int64_t block_bytes;  // bytes per block
    int64_t tail_bytes;   // bytes after a tensor's blocks (I2_S: its fp32 scale, padded to 32)
};
const GgmlTypeInfo* ggml_type_info(uint32_t type);  // nullptr when unknown
std::string ggml_type_name(uint32_t type);

struct GgufKV {
    std::string key;
    GgufType type;
    GgufType elem_type = GgufType::U8;  // arrays only
    uint64_t count = 1;                 // array element count; 1 for scalars
    size_t value_offset = 0;            // file offset of the value (array: of its first element)
    size_t value_bytes = 0;             // bytes the value occupies from value_offset
};

struct GgufTensor {
    std::string name;
    uint32_t type = 0;
    int n_dims = 0;
    int64_t dims[4] = {1, 1, 1, 1};  // ggml order: dims[0] is the contiguous (row) length
    int64_t n_elements = 0;
    uint64_t offset = 0;  // relative to the data section
    uint64_t nbytes = 0;
    size_t info_offset = 0;  // where its description starts in the file (for messages)
    const uint8_t* data = nullptr;
};

class GgufFile {
public:
    static GgufFile open(const std::string& path);          // FileNotFound / FileError / GgufError
    static GgufFile from_bytes(std::vector<uint8_t> bytes);  // tests: parse an in-memory image
    explicit GgufFile(std::unique_ptr<ByteSource> src);

    uint32_t version() const { return version_; }
    uint32_t alignment() const { return alignment_; }
    size_t data_offset() const { return data_offset_; }
    size_t file_size() const { return src_->size(); }
    const uint8_t* file_data() const { return src_->data(); }

    const std::vector<GgufKV>& kvs() const { return kvs_; }
    const GgufKV* find(std::string_view key) const;
    const std::vector<GgufTensor>& tensors() const { return tensors_; }
    const GgufTensor* find_tensor(std::string_view name) const;

    // Typed getters. Missing keys and type mismatches throw GgufError naming the key.
    // get_int accepts any integer type; get_float accepts F32/F64; get_bool only BOOL.
    std::string get_string(std::string_view key) const;
    int64_t get_int(std::string_view key) const;
    double get_float(std::string_view key) const;
    bool get_bool(std::string_view key) const;
    std::string get_string(std::string_view key, const std::string& fallback) const;
    int64_t get_int(std::string_view key, int64_t fallback) const;
    double get_float(std::string_view key, double fallback) const;
    bool get_bool(std::string_view key, bool fallback) const;

    // Decoders for any KV (validated at open, so these cannot run off the mapping).
    std::string string_value(const GgufKV& kv) const;                // STRING
    std::vector<std::string> string_array(const GgufKV& kv) const;   // ARRAY of STRING
    const uint8_t* raw_value(const GgufKV& kv) const { return src_->data() + kv.value_offset; }

    // The tensor's bytes were copied elsewhere and will not be read again: let the OS drop them.
    void release(const GgufTensor& t) const { src_->release(static_cast<size_t>(t.data - src_->data()), t.nbytes); }

private:
    void parse();
    std::unique_ptr<ByteSource> src_;
    uint32_t version_ = 0;
    uint32_t alignment_ = 32;
    size_t data_offset_ = 0;
    std::vector<GgufKV> kvs_;
    std::vector<GgufTensor> tensors_;
    std::unordered_map<std::string, size_t> kv_index_, tensor_index_;
};

}  // namespace bllama
