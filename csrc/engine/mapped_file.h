// Read-only byte sources for the GGUF reader (a memory-mapped file, or an owned buffer for tests),
// and an anonymous mapping for large scratch memory that should only cost what is touched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace bllama {

// The path does not exist (mapped to Python's FileNotFoundError).
class FileNotFound : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Any other I/O failure (permissions, mmap failure, a directory ...).
class FileError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class ByteSource {
public:
    virtual ~ByteSource() = default;
    virtual const uint8_t* data() const = 0;
    virtual size_t size() const = 0;
    // Hint that [offset, offset + len) will not be read again (the pages may leave memory).
    virtual void release(size_t offset, size_t len) const {}
};

// The whole file mapped read-only and private. An empty file maps to (nullptr, 0).
class MappedFile final : public ByteSource {
public:
    explicit MappedFile(const std::string& path);
    ~MappedFile() override;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const override { return static_cast<const uint8_t*>(addr_); }
    size_t size() const override { return size_; }
    const std::string& path() const { return path_; }
    void release(size_t offset, size_t len) const override;

private:
    std::string path_;
    void* addr_ = nullptr;
    size_t size_ = 0;
};

class BufferSource final : public ByteSource {
public:
    explicit BufferSource(std::vector<uint8_t> bytes) : bytes_(std::move(bytes)) {}
    const uint8_t* data() const override { return bytes_.data(); }
    size_t size() const override { return bytes_.size(); }

private:
    std::vector<uint8_t> bytes_;
};

// Zero-filled anonymous memory whose pages are only committed when first touched: the KV cache is sized for the
// full context and each sequence commits its part when first used (in 2 MiB steps where the model asks for huge
// pages, Model::allocate).
template <class T>
class AnonArray {
public:
    AnonArray() = default;
    explicit AnonArray(size_t count);
    ~AnonArray();
    AnonArray(AnonArray&& o) noexcept { swap(o); }
    AnonArray& operator=(AnonArray&& o) noexcept { AnonArray t(std::move(o)); swap(t); return *this; }
    AnonArray(const AnonArray&) = delete;
    AnonArray& operator=(const AnonArray&) = delete;

    T* data() { return ptr_; }
    const T* data() const { return ptr_; }
    size_t size() const { return count_; }

private:
    void swap(AnonArray& o) noexcept { std::swap(ptr_, o.ptr_); std::swap(count_, o.count_); }
    T* ptr_ = nullptr;
    size_t count_ = 0;
};

void* anon_map(size_t bytes);           // throws std::bad_alloc
void anon_unmap(void* p, size_t bytes);

template <class T>
AnonArray<T>::AnonArray(size_t count) : count_(count) {
    if (count) ptr_ = static_cast<T*>(anon_map(count * sizeof(T)));
}
template <class T>
AnonArray<T>::~AnonArray() {
    if (ptr_) anon_unmap(ptr_, count_ * sizeof(T));
}

}  // namespace bllama
