// The command line: good commands exit 0, bad arguments print the usage and
// exit 2. The binary is $SMARTTRIM_BIN (set by tests/run_all.sh) or build/smarttrim.
#include <doctest/doctest.h>

#include <string>

#include "tests/support.h"

using st::testing::CommandResult;

CommandResult run_cli(const std::string& args) {
  return st::testing::run_command(st::testing::smarttrim_binary() + " " + args);
}

TEST_CASE("cli: version, help and devices succeed") {
  CommandResult v = run_cli("version");
  CHECK(v.status == 0);
  CHECK(v.output.rfind("smarttrim ", 0) == 0);
  CommandResult h = run_cli("--help");
  CHECK(h.status == 0);
  CHECK(h.output.find("usage: smarttrim") != std::string::npos);
  CommandResult d = run_cli("devices");
  CHECK(d.status == 0);
  CHECK(d.output.find("cpu: gemm micro-kernel") != std::string::npos);
}

TEST_CASE("cli: bad arguments print the usage and exit 2") {
  CommandResult none = run_cli("");
  CHECK(none.status == 2);
  CHECK(none.output.find("usage: smarttrim") != std::string::npos);
  CommandResult bad = run_cli("no-such-command");
  CHECK(bad.status == 2);
  CHECK(bad.output.find("unknown command 'no-such-command'") != std::string::npos);
}
