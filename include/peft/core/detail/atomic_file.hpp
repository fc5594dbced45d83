#pragma once
// Atomic replacement of a file: write a temporary file in the same directory, fsync it, rename it over
// the target and fsync the directory. A crash or an error at any point leaves the previous file intact.

#include <peft/core/error.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace peft::detail {

inline std::string errno_str() { return std::strerror(errno); }

/// Owns a POSIX file descriptor.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { if (fd >= 0) ::close(fd); }
};

/// Writes all of `n` bytes or throws.
inline void write_all(int fd, const void* p, std::size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IoError("cannot write '" + path + "': " + errno_str());
    }
    c += w;
    n -= static_cast<std::size_t>(w);
  }
}

/// A sink handed to the writer callback of `atomic_write`.
class FileSink {
 public:
  FileSink(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  void write(const void* p, std::size_t n) { write_all(fd_, p, n, path_); }
  void write(const std::string& s) { write(s.data(), s.size()); }

 private:
  int fd_;
  std::string path_;
};

/// Test hook: when set, called after the temporary file is written and before it is renamed; throwing
/// from it simulates a crash mid-save.
inline std::function<void(const std::string& tmp_path)>& atomic_write_hook() {
  static std::function<void(const std::string&)> hook;
  return hook;
}

/// Replaces `path` atomically with what `fill` writes.
inline void atomic_write(const std::filesystem::path& path, const std::function<void(FileSink&)>& fill) {
  namespace fs = std::filesystem;
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::string tmpl = (dir / ("." + path.filename().string() + ".tmp-XXXXXX")).string();
  int fd = ::mkstemp(tmpl.data());
  if (fd < 0) throw IoError("cannot create a temporary file next to '" + path.string() + "': " + errno_str());
  Fd guard(fd);
  struct Remove {
    std::string p;
    bool armed = true;
    ~Remove() { if (armed) ::unlink(p.c_str()); }
  } remove{tmpl};
  ::fchmod(fd, 0644);
  FileSink sink(fd, tmpl);
  fill(sink);
  if (::fsync(fd) != 0) throw IoError("cannot fsync '" + tmpl + "': " + errno_str());
  if (auto& hook = atomic_write_hook()) hook(tmpl);
  if (::rename(tmpl.c_str(), path.c_str()) != 0)
    throw IoError("cannot rename '" + tmpl + "' to '" + path.string() + "': " + errno_str());
  remove.armed = false;
  Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY));
  if (dfd.fd >= 0) ::fsync(dfd.fd);
}

/// A read-only memory map of a whole file (unmapped by the destructor).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (f.fd < 0) throw IoError("cannot open '" + path + "': " + errno_str());
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) throw IoError("cannot stat '" + path + "': " + errno_str());
    if (!S_ISREG(st.st_mode)) throw IoError("'" + path + "' is not a regular file");
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ == 0) return;  // mmap of 0 bytes is invalid; an empty file is simply empty
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, f.fd, 0);
    if (p == MAP_FAILED) throw IoError("cannot mmap '" + path + "': " + errno_str());
    data_ = static_cast<const uint8_t*>(p);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace peft::detail
