// The command line: good commands exit 0, bad arguments print the usage and
// exit 2. The binary is $SMARTTRIM_BIN (set by tests/run_all.sh) or build/smarttrim.
#include <doctest/doctest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/wait.h>

namespace {

struct Result {
  int status;
  std::string output;  // stdout and stderr together
};

Result run_cli(const std::string& args) {
  const char* bin = std::getenv("SMARTTRIM_BIN");
  std::string cmd = std::string(bin ? bin : "build/smarttrim") + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  int raw = pclose(pipe);
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw), out};
}

}  // namespace

TEST_CASE("cli: version, help and devices succeed") {
  Result v = run_cli("version");
  CHECK(v.status == 0);
  CHECK(v.output.rfind("smarttrim ", 0) == 0);
  Result h = run_cli("--help");
  CHECK(h.status == 0);
  CHECK(h.output.find("usage: smarttrim") != std::string::npos);
  Result d = run_cli("devices");
  CHECK(d.status == 0);
  CHECK(d.output.find("cpu: gemm micro-kernel") != std::string::npos);
}

TEST_CASE("cli: bad arguments print the usage and exit 2") {
  Result none = run_cli("");
  CHECK(none.status == 2);
  CHECK(none.output.find("usage: smarttrim") != std::string::npos);
  Result bad = run_cli("no-such-command");
  CHECK(bad.status == 2);
  CHECK(bad.output.find("unknown command 'no-such-command'") != std::string::npos);
}
