// The one GGUF v3 writer of the tests and benchmarks. In memory (build(), with the file offset of every
// field it writes, so tests can corrupt known positions) or streamed to disk (write(), so a 2B-parameter
// file needs no more memory than one tensor). Header-only; tests and benchmarks only.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace testutil {

enum : uint32_t { T_U8 = 0, T_I8 = 1, T_U16 = 2, T_I16 = 3, T_U32 = 4, T_I32 = 5, T_F32 = 6, T_BOOL = 7,
                  T_STRING = 8, T_ARRAY = 9, T_U64 = 10, T_I64 = 11, T_F64 = 12 };
enum : uint32_t { G_F32 = 0, G_F16 = 1, G_TQ1_0 = 34, G_TQ2_0 = 35 };

struct Layout {
    size_t tensor_count_pos = 8, kv_count_pos = 16;
    std::map<std::string, size_t> kv_key_pos;    // key length field
    std::map<std::string, size_t> kv_type_pos;   // value type field
    std::map<std::string, size_t> kv_value_pos;  // value (for arrays: element type field)
    std::map<std::string, size_t> t_info_pos, t_ndim_pos, t_dims_pos, t_type_pos, t_offset_pos;
    std::map<std::string, size_t> t_data_pos;    // absolute file offset of the data
    size_t data_start = 0;
};

class Bytes {
public:
    std::vector<uint8_t> b;
    template <class T>
    void put(T v) {
        const size_t n = b.size();
        b.resize(n + sizeof(T));
        std::memcpy(b.data() + n, &v, sizeof(T));
    }
    void str(const std::string& s) {
        put<uint64_t>(s.size());
        b.insert(b.end(), s.begin(), s.end());
    }
};

class GgufBuilder {
public:
    uint32_t version = 3;
    uint32_t alignment = 32;  // also written as general.alignment when != 32

    void u32(const std::string& k, uint32_t v) { scalar(k, T_U32, v); }
    void i32(const std::string& k, int32_t v) { scalar(k, T_I32, v); }
    void u64(const std::string& k, uint64_t v) { scalar(k, T_U64, v); }
    void f32(const std::string& k, float v) { scalar(k, T_F32, v); }
    void f64(const std::string& k, double v) { scalar(k, T_F64, v); }
    void boolean(const std::string& k, bool v) { scalar(k, T_BOOL, static_cast<uint8_t>(v)); }
    void string(const std::string& k, const std::string& v) {
        Bytes p;
        p.str(v);
        kvs_.push_back({k, T_STRING, p.b});
    }
    void strings(const std::string& k, const std::vector<std::string>& v) {
        Bytes p;
        p.put<uint32_t>(T_STRING);
        p.put<uint64_t>(v.size());
        for (auto& s : v) p.str(s);
        kvs_.push_back({k, T_ARRAY, p.b});
    }
    template <class T>
    void array(const std::string& k, uint32_t elem_type, const std::vector<T>& v) {
        Bytes p;
        p.put<uint32_t>(elem_type);
        p.put<uint64_t>(v.size());
        for (const T& x : v) p.put<T>(x);
        kvs_.push_back({k, T_ARRAY, p.b});
    }
    void tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, std::vector<uint8_t> data) {
        tensors_.push_back({name, std::move(dims), type, std::move(data)});
    }

    // A tensor whose bytes write() asks for at the end (fill), so a file far larger than memory can be made.
    void tensor_streamed(const std::string& name, std::vector<uint64_t> dims, uint32_t type, uint64_t nbytes) {
        tensors_.push_back({name, std::move(dims), type, {}, nbytes});
    }

    // The whole file in memory; layout (optional) gets every field's offset.
    std::vector<uint8_t> build(Layout* layout = nullptr) const {
        Layout lay;
        std::vector<uint64_t> offsets;
        Bytes o = header(lay, offsets);
        for (size_t i = 0; i < tensors_.size(); ++i) {
            lay.t_data_pos[tensors_[i].name] = lay.data_start + offsets[i];
            o.b.resize(lay.data_start + offsets[i], 0);
            o.b.insert(o.b.end(), tensors_[i].data.begin(), tensors_[i].data.end());
        }
        if (layout) *layout = lay;
        return o.b;
    }

    // Streams the file to path: the header, then each tensor padded to the alignment, its bytes from
    // fill(name, type, nbytes, out) for tensor_streamed ones (out is zeroed, nbytes rounded up to the
    // alignment) and from its own data otherwise.
    template <class Fill>
    void write(const std::string& path, Fill fill) const {
        FILE* f = std::fopen(path.c_str(), "wb");
        if (!f) throw std::runtime_error("cannot write " + path);
        Layout lay;
        std::vector<uint64_t> offsets;
        const Bytes h = header(lay, offsets);
        std::fwrite(h.b.data(), 1, h.b.size(), f);
        std::vector<uint8_t> buf;
        for (const Tensor& t : tensors_) {
            buf.assign((t.size() + alignment - 1) / alignment * alignment, 0);
            if (t.data.empty()) fill(t.name, t.type, t.size(), buf.data());
            else std::memcpy(buf.data(), t.data.data(), t.data.size());
            std::fwrite(buf.data(), 1, buf.size(), f);
        }
        if (std::fclose(f) != 0) throw std::runtime_error("write failed: " + path);
    }

private:
    // Magic, version, counts, key/values and tensor infos, padded to the alignment (lay.data_start).
    Bytes header(Layout& lay, std::vector<uint64_t>& offsets) const {
        Bytes o;
        o.put<uint32_t>(0x46554747u);
        o.put<uint32_t>(version);
        o.put<uint64_t>(tensors_.size());
        const bool write_align = alignment != 32;
        o.put<uint64_t>(kvs_.size() + (write_align ? 1 : 0));
        auto put_kv = [&](const std::string& key, uint32_t type, const std::vector<uint8_t>& payload) {
            lay.kv_key_pos[key] = o.b.size();
            o.str(key);
            lay.kv_type_pos[key] = o.b.size();
            o.put<uint32_t>(type);
            lay.kv_value_pos[key] = o.b.size();
            o.b.insert(o.b.end(), payload.begin(), payload.end());
        };
        if (write_align) {
            Bytes p;
            p.put<uint32_t>(alignment);
            put_kv("general.alignment", T_U32, p.b);
        }
        for (auto& kv : kvs_) put_kv(kv.key, kv.type, kv.payload);
        uint64_t off = 0;
        for (auto& t : tensors_) {
            lay.t_info_pos[t.name] = o.b.size();
            o.str(t.name);
            lay.t_ndim_pos[t.name] = o.b.size();
            o.put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
            lay.t_dims_pos[t.name] = o.b.size();
            for (uint64_t d : t.dims) o.put<uint64_t>(d);
            lay.t_type_pos[t.name] = o.b.size();
            o.put<uint32_t>(t.type);
            lay.t_offset_pos[t.name] = o.b.size();
            o.put<uint64_t>(off);
            offsets.push_back(off);
            off += (t.size() + alignment - 1) / alignment * alignment;
        }
        o.b.resize((o.b.size() + alignment - 1) / alignment * alignment, 0);
        lay.data_start = o.b.size();
        return o;
    }

    template <class T>
    void scalar(const std::string& k, uint32_t type, T v) {
        Bytes p;
        p.put<T>(v);
        kvs_.push_back({k, type, p.b});
    }
    struct KV {
        std::string key;
        uint32_t type;
        std::vector<uint8_t> payload;
    };
    struct Tensor {
        std::string name;
        std::vector<uint64_t> dims;
        uint32_t type;
        std::vector<uint8_t> data;
        uint64_t streamed_bytes = 0;  // tensor_streamed: data stays empty
        uint64_t size() const { return data.empty() ? streamed_bytes : data.size(); }
    };
    std::vector<KV> kvs_;
    std::vector<Tensor> tensors_;
};

}  // namespace testutil
