// Typed errors. Every check in the engine throws one of these with the op's
// name and the shapes involved, so a caller (the CLI, a test) can print one
// clear line instead of crashing.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace st {

using Shape = std::vector<int64_t>;

std::string to_string(const Shape& s);  // "(2, 3, 5)"

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Shapes that do not fit the op (rank, sizes, broadcasting).
struct ShapeError : Error {
  using Error::Error;
};
// Tensors on different devices, or an op with no kernel for the device.
struct DeviceError : Error {
  using Error::Error;
};
// A bad argument that is not a shape: a probability outside [0,1), a dtype, an index out of range.
struct ArgumentError : Error {
  using Error::Error;
};
// Bytes from outside (files, headers) that are malformed or truncated.
struct FormatError : Error {
  using Error::Error;
};

}  // namespace st
