// Writing files so that a crash, a full disk or Ctrl-C never leaves a
// partial file behind: the bytes go to PATH.tmp, are flushed to disk, and
// the temporary file is renamed over PATH only when complete.
#pragma once
#include <cstddef>
#include <string>

namespace st {

// Throws st::Error naming the file when it cannot be written; PATH is then
// left as it was (absent, or its previous contents).
void write_file_atomically(const std::string& path, const void* data, size_t size);
inline void write_file_atomically(const std::string& path, const std::string& text) {
  write_file_atomically(path, text.data(), text.size());
}

// The whole file as bytes; throws st::FormatError naming it when it cannot be read.
std::string read_file(const std::string& path);

}  // namespace st
