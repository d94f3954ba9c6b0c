#include "engine/files.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unistd.h>

#include "engine/error.h"

namespace st {

void write_file_atomically(const std::string& path, const void* data, size_t size) {
  const std::string tmp = path + ".tmp";
  auto fail = [&](const char* what) {
    const std::string reason = std::strerror(errno);
    std::remove(tmp.c_str());
    throw Error(std::string("cannot ") + what + " '" + path + "': " + reason);
  };
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail("create");
  const bool written = size == 0 || std::fwrite(data, 1, size, f) == size;
  const bool flushed = written && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  if (std::fclose(f) != 0 || !flushed) fail("write");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("rename onto");
}

std::string read_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw FormatError("cannot open '" + path + "': " + std::strerror(errno));
  std::string bytes;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.append(buf, n);
  const bool error = std::ferror(f);
  std::fclose(f);
  if (error) throw FormatError("cannot read '" + path + "'");
  return bytes;
}

}  // namespace st
