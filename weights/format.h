// The weights file: safetensors-compatible, readable in place with mmap.
//
//   u64 little-endian L | L bytes of JSON header (space-padded) | data region
//
// The header is a JSON object: "__metadata__" maps string keys to string
// values (always "format": "smarttrim" and "format_version": "1"), and every
// other key names a tensor: {"dtype": "F32"|"I32", "shape": [..],
// "data_offsets": [begin, end]} with offsets relative to the data region.
// The writer pads the header with spaces so the data region starts 64-byte
// aligned in the file, and puts every tensor at a 64-byte-aligned offset.
// The safetensors library insists that the tensors tile the data region with
// no gap, so each gap is itself an entry, "__padding_<k>__" of dtype U8,
// which readers skip; the file ends where the last tensor ends.
//
// The reader checks every field, every range against the file size and
// that no two tensors overlap before it reads any tensor data; anything
// malformed is a st::FormatError naming the file.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace st::weights {

constexpr uint64_t kAlignment = 64;
constexpr const char* kPaddingPrefix = "__padding_";  // entries that only fill gaps
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // a longer header is taken as corruption

// Writes path + ".tmp" and renames it onto path, so a failed write never
// leaves a partial file at path. Names must be unique, non-empty and not
// start with "__" (reserved for "__metadata__" and padding); tensors may live on any device (they are copied to the host).
// metadata may not override "format" / "format_version" with other values.
void save(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata);

struct Entry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t offset = 0;  // from the start of the data region
  uint64_t bytes = 0;
};

// A validated, memory-mapped weights file. Not copyable; unmapped on destruction.
class WeightsFile {
 public:
  explicit WeightsFile(const std::string& path);
  ~WeightsFile();
  WeightsFile(const WeightsFile&) = delete;
  WeightsFile& operator=(const WeightsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<Entry>& entries() const { return entries_; }  // in file order (by offset)
  uint64_t file_size() const { return size_; }
  uint64_t data_start() const { return data_start_; }  // byte offset of the data region in the file

  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const Entry& entry(const std::string& name) const;  // ArgumentError when absent
  Tensor get(const std::string& name) const;          // a new CPU tensor with a copy of the data

 private:
  void parse();
  void release();

  std::string path_;
  const unsigned char* map_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::map<std::string, std::string> metadata_;
  std::vector<Entry> entries_;
  std::map<std::string, size_t> index_;
};

// "F32" / "I32", the safetensors spelling.
const char* dtype_tag(DType t);

}  // namespace st::weights
