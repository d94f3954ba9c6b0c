// Helpers shared by tests that run other programs: the smarttrim binary,
// the Python interpreter of the PyTorch reference tests, a way to run a
// command and keep what it printed, and a scratch directory.
#pragma once
#include <stdlib.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "engine/error.h"

namespace st::testing {

struct CommandResult {
  int status;          // the exit code; 128 + signal when a signal killed it; -1 when it could not start
  std::string output;  // stdout and stderr together
};

inline CommandResult run_command(const std::string& command) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return {-1, ""};
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  int raw = ::pclose(pipe);
  if (raw == -1) return {-1, out};
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw), out};
}

inline std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

// $SMARTTRIM_BIN (tests/run_all.sh sets it) or build/smarttrim.
inline std::string smarttrim_binary() { return env_or("SMARTTRIM_BIN", "build/smarttrim"); }

// $SMARTTRIM_PYTHON or Debian's /usr/bin/python3, which has python3-torch
// after `make deps`. Tests that need torch fail without it: it is a declared dependency.
inline std::string python_interpreter() { return env_or("SMARTTRIM_PYTHON", "/usr/bin/python3"); }

// A fresh directory under $TMPDIR, removed with everything in it when it goes out of scope.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "smarttrim_test_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("cannot create a temporary directory");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// The message of the exception of type E that f throws ("" when it throws none).
template <typename E, typename F>
std::string thrown_message(F f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}
template <typename F>
std::string format_error(F f) { return thrown_message<st::FormatError>(f); }
template <typename F>
std::string argument_error(F f) { return thrown_message<st::ArgumentError>(f); }

}  // namespace st::testing
