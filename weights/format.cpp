// The weights file format: see weights/format.h.
#include "weights/format.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

namespace st::weights {

namespace {

uint64_t align_up(uint64_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }

struct TmpFile {  // removes the temporary file unless committed
  std::string path;
  FILE* f = nullptr;
  bool committed = false;
  ~TmpFile() {
    if (f) std::fclose(f);
    if (!committed) std::remove(path.c_str());
  }
};

void write_all(TmpFile& t, const void* p, size_t n) {
  if (n != 0 && std::fwrite(p, 1, n, t.f) != n)
    throw Error("weights: cannot write '" + t.path + "': " + std::strerror(errno));
}

}  // namespace

const char* dtype_tag(DType t) { return t == DType::F32 ? "F32" : "I32"; }

void save(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata) {
  // Check everything before creating any file.
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  meta["format"] = "smarttrim";
  meta["format_version"] = "1";
  for (const auto& [k, v] : metadata) {
    if (meta.contains(k)) {
      if (meta[k].get<std::string>() != v)
        throw ArgumentError("weights::save: metadata '" + k + "' is reserved (it is '" +
                            meta[k].get<std::string>() + "')");
      continue;
    }
    meta[k] = v;
  }
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = meta;

  // Tensors are laid out in order, each at a 64-byte-aligned offset. The
  // safetensors library wants the tensors to tile the data region exactly, so
  // every gap becomes a padding entry of zero bytes (U8) that readers skip.
  std::vector<Tensor> host;
  std::set<std::string> names;
  uint64_t cursor = 0;
  int paddings = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name.rfind("__", 0) == 0)
      throw ArgumentError("weights::save: invalid tensor name '" + name + "' (empty, or starts with the reserved '__')");
    if (!names.insert(name).second) throw ArgumentError("weights::save: duplicate tensor name '" + name + "'");
    if (!t.defined()) throw ArgumentError("weights::save: tensor '" + name + "' is undefined");
    Tensor h = t.to(Device::CPU);
    const uint64_t bytes = h.nbytes();
    if (bytes != 0 && cursor % kAlignment != 0) {
      const uint64_t gap = align_up(cursor) - cursor;
      header[std::string(kPaddingPrefix) + std::to_string(paddings++) + "__"] = {
          {"dtype", "U8"}, {"shape", {gap}}, {"data_offsets", {cursor, cursor + gap}}};
      cursor += gap;
    }
    header[name] = {{"dtype", dtype_tag(h.dtype())}, {"shape", h.shape()}, {"data_offsets", {cursor, cursor + bytes}}};
    cursor += bytes;
    host.push_back(h);
  }

  std::string text = header.dump();
  uint64_t len = text.size();
  len = align_up(8 + len) - 8;  // the data region starts 64-byte aligned in the file
  text.resize(len, ' ');
  unsigned char lenbytes[8];
  for (int i = 0; i < 8; i++) lenbytes[i] = static_cast<unsigned char>(len >> (8 * i));

  TmpFile tmp;
  tmp.path = path + ".tmp";
  tmp.f = std::fopen(tmp.path.c_str(), "wb");
  if (!tmp.f) throw Error("weights: cannot create '" + tmp.path + "': " + std::strerror(errno));
  write_all(tmp, lenbytes, 8);
  write_all(tmp, text.data(), text.size());
  uint64_t pos = 0;  // mirrors the layout loop above
  static const char zeros[kAlignment] = {};
  for (const Tensor& h : host) {
    if (h.nbytes() == 0) continue;
    write_all(tmp, zeros, align_up(pos) - pos);
    write_all(tmp, h.raw_data(), h.nbytes());
    pos = align_up(pos) + h.nbytes();
  }
  if (std::fflush(tmp.f) != 0 || ::fsync(::fileno(tmp.f)) != 0)
    throw Error("weights: cannot write '" + tmp.path + "': " + std::strerror(errno));
  int rc = std::fclose(tmp.f);
  tmp.f = nullptr;
  if (rc != 0) throw Error("weights: cannot write '" + tmp.path + "': " + std::strerror(errno));
  if (std::rename(tmp.path.c_str(), path.c_str()) != 0)
    throw Error("weights: cannot rename '" + tmp.path + "' to '" + path + "': " + std::strerror(errno));
  tmp.committed = true;
}

// --- reading

WeightsFile::WeightsFile(const std::string& path) : path_(path) {
  try {
    parse();
  } catch (...) {
    release();
    throw;
  }
}

WeightsFile::~WeightsFile() { release(); }

void WeightsFile::release() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), size_);
  map_ = nullptr;
}

void WeightsFile::parse() {
  auto fail = [&](const std::string& what) -> FormatError {
    return FormatError("weights file '" + path_ + "': " + what);
  };
  int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat sb {};
  if (::fstat(fd, &sb) != 0) {
    int err = errno;
    ::close(fd);
    throw fail(std::string("cannot stat: ") + std::strerror(err));
  }
  if (!S_ISREG(sb.st_mode)) {
    ::close(fd);
    throw fail("not a regular file");
  }
  size_ = uint64_t(sb.st_size);
  if (size_ == 0) {
    ::close(fd);
    throw fail("empty file");
  }
  if (size_ < 8) {
    ::close(fd);
    throw fail("file too short (" + std::to_string(size_) + " bytes) to hold the 8-byte header length");
  }
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);
  if (m == MAP_FAILED) throw fail(std::string("cannot mmap: ") + std::strerror(err));
  map_ = static_cast<const unsigned char*>(m);

  uint64_t len = 0;
  for (int i = 0; i < 8; i++) len |= uint64_t(map_[i]) << (8 * i);
  if (len > kMaxHeaderBytes)
    throw fail("header length " + std::to_string(len) + " is absurd (more than " +
               std::to_string(kMaxHeaderBytes) + " bytes)");
  if (len > size_ - 8)
    throw fail("header length " + std::to_string(len) + " runs past the end of the file (" +
               std::to_string(size_) + " bytes)");
  data_start_ = 8 + len;

  nlohmann::json h = nlohmann::json::parse(map_ + 8, map_ + 8 + len, nullptr, false);
  if (h.is_discarded()) throw fail("header is not valid JSON");
  if (!h.is_object()) throw fail("header is not a JSON object");

  const uint64_t data_size = size_ - data_start_;
  std::vector<Entry> paddings;  // checked for overlaps with the tensors, then forgotten
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& key = it.key();
    const nlohmann::json& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) throw fail("__metadata__ is not an object of strings");
      for (auto m2 = v.begin(); m2 != v.end(); ++m2) {
        if (!m2.value().is_string())
          throw fail("__metadata__ is not an object of strings (value of '" + m2.key() + "' is " +
                     m2.value().type_name() + ")");
        metadata_[m2.key()] = m2.value().get<std::string>();
      }
      continue;
    }
    const std::string who = "tensor '" + key + "': ";
    if (!v.is_object()) throw fail(who + "entry is not an object");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!v.contains(field)) throw fail(who + "missing '" + field + "'");
    const auto& jd = v["dtype"];
    const auto& js = v["shape"];
    const auto& jo = v["data_offsets"];
    if (!jd.is_string()) throw fail(who + "'dtype' has the wrong type (" + jd.type_name() + ", expected string)");
    Entry e;
    e.name = key;
    const std::string dt = jd.get<std::string>();
    const bool padding = key.rfind(kPaddingPrefix, 0) == 0;
    if (padding && dt != "U8") throw fail(who + "a padding entry must have dtype U8, not '" + dt + "'");
    if (padding) e.dtype = DType::F32;  // bytes only; checked below as a byte count
    else if (dt == "F32") e.dtype = DType::F32;
    else if (dt == "I32") e.dtype = DType::I32;
    else throw fail(who + "unknown dtype '" + dt + "' (expected F32 or I32)");
    if (!js.is_array()) throw fail(who + "'shape' has the wrong type (" + js.type_name() + ", expected array)");
    uint64_t n = 1;
    bool overflow = false;
    for (const auto& d : js) {
      if (!d.is_number_integer()) throw fail(who + "'shape' has the wrong type (expected an array of integers)");
      if (!d.is_number_unsigned())  // a signed JSON integer here is negative
        throw fail(who + "negative dimension " + std::to_string(d.get<int64_t>()) + " in shape");
      uint64_t u = d.get<uint64_t>();
      if (u > uint64_t(INT64_MAX)) throw fail(who + "dimension " + std::to_string(u) + " is too large");
      e.shape.push_back(int64_t(u));
      overflow = overflow || __builtin_mul_overflow(n, u, &n);
    }
    if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
      throw fail(who + "'data_offsets' has the wrong type (expected two non-negative integers)");
    uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
    if (end < begin)
      throw fail(who + "data_offsets end " + std::to_string(end) + " < begin " + std::to_string(begin));
    e.offset = begin;
    e.bytes = end - begin;
    uint64_t want = 0;
    const uint64_t element_bytes = padding ? 1 : dtype_size(e.dtype);
    if (overflow || __builtin_mul_overflow(n, element_bytes, &want) || want != e.bytes)
      throw fail(who + "byte size " + std::to_string(e.bytes) + " != numel * dtype size for shape " +
                 to_string(e.shape) + " " + dt);
    if (end > data_size)
      throw fail(who + "data range [" + std::to_string(begin) + ", " + std::to_string(end) +
                 ") passes the end of the file (data region is " + std::to_string(data_size) + " bytes)");
    if (padding) {
      paddings.push_back(std::move(e));
      continue;
    }
    entries_.push_back(std::move(e));
  }

  auto by_offset = [](const Entry& a, const Entry& b) {
    return a.offset != b.offset ? a.offset < b.offset : a.bytes < b.bytes;
  };
  std::vector<Entry> all = entries_;
  all.insert(all.end(), paddings.begin(), paddings.end());
  std::stable_sort(all.begin(), all.end(), by_offset);
  const Entry* last = nullptr;  // the non-empty entry reaching furthest so far
  for (const Entry& e : all) {
    if (e.bytes == 0) continue;
    if (last && e.offset < last->offset + last->bytes)
      throw fail("tensors '" + last->name + "' and '" + e.name + "' overlap");
    if (!last || e.offset + e.bytes > last->offset + last->bytes) last = &e;
  }
  std::stable_sort(entries_.begin(), entries_.end(), by_offset);
  for (size_t i = 0; i < entries_.size(); i++) index_[entries_[i].name] = i;
}

const Entry& WeightsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    throw ArgumentError("weights file '" + path_ + "' has no tensor '" + name + "' (it has " +
                        std::to_string(entries_.size()) + " tensors)");
  return entries_[it->second];
}

Tensor WeightsFile::get(const std::string& name) const {
  const Entry& e = entry(name);
  Tensor t = Tensor::empty(e.shape, e.dtype);
  if (e.bytes != 0) std::memcpy(t.raw_data(), map_ + data_start_ + e.offset, e.bytes);
  return t;
}

}  // namespace st::weights
