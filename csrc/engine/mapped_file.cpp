#include "engine/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <new>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bllama {

namespace {
// Closes the descriptor on every path out of the constructor; the mapping outlives it.
struct Fd {
    int fd;
    ~Fd() { if (fd >= 0) ::close(fd); }
};
}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
    Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    if (f.fd < 0) {
        const int err = errno;
        if (err == ENOENT) throw FileNotFound("no such file: '" + path + "'");
        throw FileError("cannot open '" + path + "': " + std::strerror(err));
    }
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) throw FileError("cannot stat '" + path + "': " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) throw FileError("not a regular file: '" + path + "'");
    size_ = static_cast<size_t>(st.st_size);
    if (size_ == 0) return;  // mmap rejects length 0; the parser reports the empty file
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, f.fd, 0);
    if (p == MAP_FAILED) throw FileError("cannot mmap '" + path + "': " + std::strerror(errno));
    addr_ = p;
    // Weights are read front to back once at load (then copied into the kernels' layout).
    ::madvise(addr_, size_, MADV_WILLNEED);
}

MappedFile::~MappedFile() {
    if (addr_) ::munmap(addr_, size_);
}

void MappedFile::release(size_t offset, size_t len) const {
    // Only whole pages inside the range; clean file-backed pages are simply dropped from our RSS.
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    const size_t begin = (offset + page - 1) / page * page, end = (offset + len) / page * page;
    if (addr_ && end > begin && end <= size_)
        ::madvise(static_cast<char*>(addr_) + begin, end - begin, MADV_DONTNEED);
}

void* anon_map(size_t bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return p;
}

void anon_unmap(void* p, size_t bytes) { ::munmap(p, bytes); }

}  // namespace bllama
