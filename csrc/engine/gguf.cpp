#include "engine/gguf.h"

#include <algorithm>
#include <cstring>

namespace bllama {

namespace {

constexpr uint32_t kMagic = 0x46554747u;  // "GGUF" read as little-endian uint32
constexpr uint64_t kMaxKeyLen = 65535;     // GGUF spec: keys are at most 2^16 - 1 bytes
constexpr uint64_t kMaxTensorName = 255;   // ggml uses 64; be lenient but bounded
constexpr uint32_t kMaxDims = 4;

std::string at(size_t off) { return " (at offset " + std::to_string(off) + ")"; }

// Bounds-checked little-endian reader over [base, base + size).
class Cursor {
public:
    Cursor(const uint8_t* base, size_t size) : base_(base), size_(size) {}
    size_t pos() const { return pos_; }
    size_t remaining() const { return size_ - pos_; }

    void need(uint64_t n, const std::string& what) const {
        if (n > remaining())
            throw GgufError("truncated file: " + what + " needs " + std::to_string(n) + " bytes" + at(pos_) +
                            " but only " + std::to_string(remaining()) + " remain");
    }
    template <class T>
    T read(const std::string& what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, base_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    void skip(uint64_t n, const std::string& what) {
        need(n, what);
        pos_ += static_cast<size_t>(n);
    }
    std::string read_string(const std::string& what, uint64_t max_len) {
        const size_t start = pos_;
        const uint64_t len = read<uint64_t>("length of " + what);
        if (len > max_len)
            throw GgufError(what + ": length " + std::to_string(len) + " exceeds the limit of " +
                            std::to_string(max_len) + at(start));
        need(len, what);
        std::string s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(len));
        pos_ += static_cast<size_t>(len);
        return s;
    }
    void skip_string(const std::string& what) {
        const uint64_t len = read<uint64_t>("length of " + what);
        skip(len, what);
    }
    // n consecutive strings (a tokenizer vocabulary): messages are only built on failure.
    void skip_strings(uint64_t n, const std::string& what) {
        for (uint64_t i = 0; i < n; ++i) {
            uint64_t len = 0;
            if (remaining() >= 8) {
                std::memcpy(&len, base_ + pos_, 8);
                if (len <= remaining() - 8) {
                    pos_ += 8 + static_cast<size_t>(len);
                    continue;
                }
            }
            skip_string(what + "[" + std::to_string(i) + "]");  // throws with the precise message
        }
    }

private:
    const uint8_t* base_;
    size_t size_;
    size_t pos_ = 0;
};

bool valid_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::F64); }

// Walks one value of type t (not the type tag itself) and checks it fits; arrays may not nest.
void skip_value(Cursor& c, GgufType t, const std::string& what, GgufKV* kv) {
    if (t == GgufType::STRING) {
        c.skip_string(what);
        return;
    }
    if (t != GgufType::ARRAY) {
        c.skip(gguf_scalar_size(t), what);
        return;
    }
    const size_t type_pos = c.pos();
    const uint32_t et = c.read<uint32_t>("array element type of " + what);
    if (!valid_type(et))
        throw GgufError(what + ": invalid array element type " + std::to_string(et) + at(type_pos));
    const GgufType elem = static_cast<GgufType>(et);
    if (elem == GgufType::ARRAY)
        throw GgufError(what + ": nested arrays are not supported" + at(type_pos));
    const size_t count_pos = c.pos();
    const uint64_t n = c.read<uint64_t>("array length of " + what);
    // Every element needs at least this many bytes, so an absurd count fails here, before any loop.
    const uint64_t min_elem = elem == GgufType::STRING ? 8 : gguf_scalar_size(elem);
    if (n > c.remaining() / min_elem)
        throw GgufError(what + ": array length " + std::to_string(n) + " of " + gguf_type_name(elem) +
                        " cannot fit in the " + std::to_string(c.remaining()) + " remaining bytes" + at(count_pos));
    if (kv) {
        kv->elem_type = elem;
        kv->count = n;
        kv->value_offset = c.pos();
    }
    if (elem == GgufType::STRING) {
        c.skip_strings(n, what);
    } else {
        c.skip(n * min_elem, what + " data");
    }
}

}  // namespace

const char* gguf_type_name(GgufType t) {
    switch (t) {
        case GgufType::U8: return "uint8";
        case GgufType::I8: return "int8";
        case GgufType::U16: return "uint16";
        case GgufType::I16: return "int16";
        case GgufType::U32: return "uint32";
        case GgufType::I32: return "int32";
        case GgufType::F32: return "float32";
        case GgufType::BOOL: return "bool";
        case GgufType::STRING: return "string";
        case GgufType::ARRAY: return "array";
        case GgufType::U64: return "uint64";
        case GgufType::I64: return "int64";
        case GgufType::F64: return "float64";
    }
    return "invalid";
}

size_t gguf_scalar_size(GgufType t) {
    switch (t) {
        case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
        case GgufType::U16: case GgufType::I16: return 2;
        case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
        case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
        default: return 0;
    }
}

const GgmlTypeInfo* ggml_type_info(uint32_t type) {
    static const struct { uint32_t id; GgmlTypeInfo info; } table[] = {
        {0, {"F32", 1, 4, 0}},       {1, {"F16", 1, 2, 0}},       {2, {"Q4_0", 32, 18, 0}},
        {3, {"Q4_1", 32, 20, 0}},    {6, {"Q5_0", 32, 22, 0}},    {7, {"Q5_1", 32, 24, 0}},
        {8, {"Q8_0", 32, 34, 0}},    {9, {"Q8_1", 32, 36, 0}},    {10, {"Q2_K", 256, 84, 0}},
        {11, {"Q3_K", 256, 110, 0}}, {12, {"Q4_K", 256, 144, 0}}, {13, {"Q5_K", 256, 176, 0}},
        {14, {"Q6_K", 256, 210, 0}}, {15, {"Q8_K", 256, 292, 0}}, {24, {"I8", 1, 1, 0}},
        {25, {"I16", 1, 2, 0}},      {26, {"I32", 1, 4, 0}},      {27, {"I64", 1, 8, 0}},
        {28, {"F64", 1, 8, 0}},      {30, {"BF16", 1, 2, 0}},     {34, {"TQ1_0", 256, 54, 0}},
        {35, {"TQ2_0", 256, 66, 0}},
        // bitnet.cpp (ggml_nbytes): 128 codes in 32 bytes, then one fp32 scale for the tensor in a 32-byte tail.
        {36, {"I2_S", 128, 32, 32}},
    };
    for (const auto& e : table)
        if (e.id == type) return &e.info;
    return nullptr;
}

std::string ggml_type_name(uint32_t type) {
    const GgmlTypeInfo* ti = ggml_type_info(type);
    return ti ? ti->name : "type " + std::to_string(type);
}

GgufFile GgufFile::open(const std::string& path) {
    try {
        return GgufFile(std::make_unique<MappedFile>(path));
    } catch (const GgufError& e) {
        throw GgufError("'" + path + "': " + e.what());
    }
}

GgufFile GgufFile::from_bytes(std::vector<uint8_t> bytes) {
    return GgufFile(std::make_unique<BufferSource>(std::move(bytes)));
}

GgufFile::GgufFile(std::unique_ptr<ByteSource> src) : src_(std::move(src)) { parse(); }

void GgufFile::parse() {
    const size_t file_size = src_->size();
    Cursor c(src_->data(), file_size);
    if (file_size < 4) throw GgufError("not a GGUF file: only " + std::to_string(file_size) + " bytes");
    const uint32_t magic = c.read<uint32_t>("magic");
    if (magic != kMagic) throw GgufError("not a GGUF file: bad magic" + at(0));
    version_ = c.read<uint32_t>("version");
    if (version_ == 1) throw GgufError("GGUF version 1 is not supported (use v2 or v3)" + at(4));
    if (version_ != 2 && version_ != 3) {
        if ((version_ & 0xffffu) == 0 && version_ != 0)
            throw GgufError("big-endian GGUF files are not supported" + at(4));
        throw GgufError("unsupported GGUF version " + std::to_string(version_) + at(4));
    }
    const uint64_t n_tensors = c.read<uint64_t>("tensor count");
    const uint64_t n_kv = c.read<uint64_t>("metadata KV count");
    // Lower bounds on the encoded size of one KV (key length + 1 char + type + 1 byte) and one tensor
    // info (name length + 1 char + ndim + one dim + type + offset): absurd counts stop here.
    if (n_kv > c.remaining() / 14)
        throw GgufError("metadata KV count " + std::to_string(n_kv) + " cannot fit in the " +
                        std::to_string(c.remaining()) + " remaining bytes" + at(16));
    if (n_tensors > c.remaining() / 33)
        throw GgufError("tensor count " + std::to_string(n_tensors) + " cannot fit in the " +
                        std::to_string(c.remaining()) + " remaining bytes" + at(8));

    kvs_.reserve(static_cast<size_t>(n_kv));
    for (uint64_t i = 0; i < n_kv; ++i) {
        const size_t kv_pos = c.pos();
        GgufKV kv;
        kv.key = c.read_string("key of metadata entry " + std::to_string(i), kMaxKeyLen);
        if (kv.key.empty()) throw GgufError("metadata entry " + std::to_string(i) + " has an empty key" + at(kv_pos));
        const std::string what = "metadata '" + kv.key + "'";
        const size_t type_pos = c.pos();
        const uint32_t t = c.read<uint32_t>("value type of " + what);
        if (!valid_type(t)) throw GgufError(what + ": invalid value type " + std::to_string(t) + at(type_pos));
        kv.type = static_cast<GgufType>(t);
        kv.value_offset = c.pos();
        skip_value(c, kv.type, what, &kv);
        kv.value_bytes = c.pos() - kv.value_offset;
        if (kv_index_.count(kv.key)) throw GgufError("duplicate metadata key '" + kv.key + "'" + at(kv_pos));
        kv_index_.emplace(kv.key, kvs_.size());
        kvs_.push_back(std::move(kv));
    }

    if (const GgufKV* a = find("general.alignment")) {
        if (a->type != GgufType::U32)
            throw GgufError(std::string("metadata 'general.alignment' must be uint32, got ") + gguf_type_name(a->type) +
                            at(a->value_offset));
        uint32_t v;
        std::memcpy(&v, raw_value(*a), 4);
        if (v == 0 || (v & (v - 1)) != 0)
            throw GgufError("metadata 'general.alignment' = " + std::to_string(v) + " is not a power of two" +
                            at(a->value_offset));
        alignment_ = v;
    }

    tensors_.reserve(static_cast<size_t>(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        GgufTensor t;
        t.info_offset = c.pos();
        t.name = c.read_string("name of tensor " + std::to_string(i), kMaxTensorName);
        if (t.name.empty()) throw GgufError("tensor " + std::to_string(i) + " has an empty name" + at(t.info_offset));
        const std::string what = "tensor '" + t.name + "'";
        const size_t nd_pos = c.pos();
        const uint32_t nd = c.read<uint32_t>("n_dims of " + what);
        if (nd == 0 || nd > kMaxDims)
            throw GgufError(what + ": n_dims " + std::to_string(nd) + " is not in [1, 4]" + at(nd_pos));
        t.n_dims = static_cast<int>(nd);
        uint64_t n_el = 1;
        for (uint32_t d = 0; d < nd; ++d) {
            const size_t dpos = c.pos();
            const uint64_t v = c.read<uint64_t>("dim " + std::to_string(d) + " of " + what);
            // A tensor cannot hold more values than the file has bits, whatever its type.
            if (v == 0 || v > file_size * 8ull || __builtin_mul_overflow(n_el, v, &n_el) || n_el > file_size * 8ull)
                throw GgufError(what + ": dim " + std::to_string(d) + " = " + std::to_string(v) +
                                " is zero or too large for a " + std::to_string(file_size) + "-byte file" + at(dpos));
            t.dims[d] = static_cast<int64_t>(v);
        }
        t.n_elements = static_cast<int64_t>(n_el);
        const size_t type_pos = c.pos();
        t.type = c.read<uint32_t>("type of " + what);
        const GgmlTypeInfo* ti = ggml_type_info(t.type);
        if (!ti) throw GgufError(what + ": unknown or unsupported ggml type " + std::to_string(t.type) + at(type_pos));
        if (t.dims[0] % ti->block_elems != 0)
            throw GgufError(what + ": row length " + std::to_string(t.dims[0]) + " is not a multiple of the " +
                            ti->name + " block size " + std::to_string(ti->block_elems) + at(nd_pos));
        t.nbytes = n_el / static_cast<uint64_t>(ti->block_elems) * static_cast<uint64_t>(ti->block_bytes) +
                   static_cast<uint64_t>(ti->tail_bytes);
        const size_t off_pos = c.pos();
        t.offset = c.read<uint64_t>("data offset of " + what);
        if (t.offset % alignment_ != 0)
            throw GgufError(what + ": data offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                            std::to_string(alignment_) + at(off_pos));
        if (tensor_index_.count(t.name)) throw GgufError("duplicate tensor name '" + t.name + "'" + at(t.info_offset));
        tensor_index_.emplace(t.name, tensors_.size());
        tensors_.push_back(std::move(t));
    }

    // The data section starts at the next multiple of the alignment after the tensor infos.
    const size_t info_end = c.pos();
    const uint64_t pad = (alignment_ - info_end % alignment_) % alignment_;
    data_offset_ = info_end + static_cast<size_t>(pad);
    if (tensors_.empty()) return;
    if (data_offset_ > file_size)
        throw GgufError("truncated file: the data section would start at offset " + std::to_string(data_offset_) +
                        " beyond the end of the " + std::to_string(file_size) + "-byte file");
    const uint64_t data_size = file_size - data_offset_;
    for (GgufTensor& t : tensors_) {
        if (t.offset > data_size || t.nbytes > data_size - t.offset)
            throw GgufError("tensor '" + t.name + "': data [" + std::to_string(t.offset) + ", +" +
                            std::to_string(t.nbytes) + ") runs past the end of the data section (" +
                            std::to_string(data_size) + " bytes, file offset " + std::to_string(data_offset_) + ")" +
                            at(t.info_offset));
        t.data = src_->data() + data_offset_ + t.offset;
    }
    std::vector<const GgufTensor*> order;
    order.reserve(tensors_.size());
    for (const GgufTensor& t : tensors_) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < order.size(); ++i)
        if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset)
            throw GgufError("tensor '" + order[i]->name + "' (data offset " + std::to_string(order[i]->offset) +
                            ") overlaps tensor '" + order[i - 1]->name + "' (data [" +
                            std::to_string(order[i - 1]->offset) + ", +" + std::to_string(order[i - 1]->nbytes) + "))");
}

const GgufKV* GgufFile::find(std::string_view key) const {
    auto it = kv_index_.find(std::string(key));
    return it == kv_index_.end() ? nullptr : &kvs_[it->second];
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
    auto it = tensor_index_.find(std::string(name));
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
const GgufKV& require(const GgufFile& f, std::string_view key) {
    const GgufKV* kv = f.find(key);
    if (!kv) throw GgufError("missing metadata key '" + std::string(key) + "'");
    return *kv;
}
[[noreturn]] void wrong_type(const GgufKV& kv, const char* expected) {
    throw GgufError("metadata '" + kv.key + "': expected " + expected + ", got " + gguf_type_name(kv.type) +
                    at(kv.value_offset));
}
template <class T>
T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
}  // namespace

std::string GgufFile::string_value(const GgufKV& kv) const {
    if (kv.type != GgufType::STRING) wrong_type(kv, "string");
    return std::string(reinterpret_cast<const char*>(raw_value(kv)) + 8, kv.value_bytes - 8);
}

std::vector<std::string> GgufFile::string_array(const GgufKV& kv) const {
    if (kv.type != GgufType::ARRAY || kv.elem_type != GgufType::STRING) wrong_type(kv, "array of string");
    std::vector<std::string> out;
    out.reserve(static_cast<size_t>(kv.count));
    const uint8_t* p = raw_value(kv);
    for (uint64_t i = 0; i < kv.count; ++i) {  // lengths were checked at open
        const uint64_t len = load<uint64_t>(p);
        out.emplace_back(reinterpret_cast<const char*>(p + 8), static_cast<size_t>(len));
        p += 8 + len;
    }
    return out;
}

std::string GgufFile::get_string(std::string_view key) const { return string_value(require(*this, key)); }

int64_t GgufFile::get_int(std::string_view key) const {
    const GgufKV& kv = require(*this, key);
    const uint8_t* p = raw_value(kv);
    switch (kv.type) {
        case GgufType::U8: return load<uint8_t>(p);
        case GgufType::I8: return load<int8_t>(p);
        case GgufType::U16: return load<uint16_t>(p);
        case GgufType::I16: return load<int16_t>(p);
        case GgufType::U32: return load<uint32_t>(p);
        case GgufType::I32: return load<int32_t>(p);
        case GgufType::I64: return load<int64_t>(p);
        case GgufType::U64: {
            const uint64_t v = load<uint64_t>(p);
            if (v > static_cast<uint64_t>(INT64_MAX))
                throw GgufError("metadata '" + kv.key + "': value " + std::to_string(v) + " is too large");
            return static_cast<int64_t>(v);
        }
        default: wrong_type(kv, "an integer");
    }
}

double GgufFile::get_float(std::string_view key) const {
    const GgufKV& kv = require(*this, key);
    if (kv.type == GgufType::F32) return load<float>(raw_value(kv));
    if (kv.type == GgufType::F64) return load<double>(raw_value(kv));
    wrong_type(kv, "float32 or float64");
}

bool GgufFile::get_bool(std::string_view key) const {
    const GgufKV& kv = require(*this, key);
    if (kv.type != GgufType::BOOL) wrong_type(kv, "bool");
    const uint8_t v = load<uint8_t>(raw_value(kv));
    if (v > 1) throw GgufError("metadata '" + kv.key + "': bool byte " + std::to_string(v) + " is not 0 or 1" + at(kv.value_offset));
    return v != 0;
}

std::string GgufFile::get_string(std::string_view key, const std::string& fallback) const {
    return find(key) ? get_string(key) : fallback;
}
int64_t GgufFile::get_int(std::string_view key, int64_t fallback) const { return find(key) ? get_int(key) : fallback; }
double GgufFile::get_float(std::string_view key, double fallback) const { return find(key) ? get_float(key) : fallback; }
bool GgufFile::get_bool(std::string_view key, bool fallback) const { return find(key) ? get_bool(key) : fallback; }

}  // namespace bllama
