// What every subcommand of the command line shares: option parsing with
// --help, a progress bar, a JSON Lines log and Ctrl-C handling.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace st::cli {

// A wrong command line: main prints the message and the command's usage, and exits 2.
struct UsageError : std::runtime_error {
  UsageError(const std::string& message, std::string usage_text)
      : std::runtime_error(message), usage(std::move(usage_text)) {}
  std::string usage;
};

// The options of one subcommand: declared with their help, then parsed.
//   Args args("smarttrim eval", "Evaluates a model on a data set.");
//   args.option("model", "FILE", "the model's weights").required();
//   args.option("batch", "N", "examples per batch", "32");
//   args.flag("full", "run at full capacity");
//   if (!args.parse(argc, argv, 2)) return 0;   // --help was printed
//   int64_t batch = args.integer("batch");
class Args {
 public:
  Args(std::string command, std::string summary) : command_(std::move(command)), summary_(std::move(summary)) {}

  // --name VALUE; default_value "" means none (has() is false until given).
  Args& option(const std::string& name, const std::string& value_name, const std::string& help,
               const std::string& default_value = "");
  // --name VALUE, any number of times; all() gives them in order.
  Args& repeated(const std::string& name, const std::string& value_name, const std::string& help);
  // --name, no value.
  Args& flag(const std::string& name, const std::string& help);
  // The option declared last must be given.
  Args& required();
  // Free text printed after the options (examples, notes).
  Args& epilog(const std::string& text);

  // Parses argv[first..]; false when --help was asked for (the help is printed
  // to stdout). Throws UsageError for an unknown option, a missing value or a
  // missing required option.
  bool parse(int argc, char** argv, int first);

  bool has(const std::string& name) const;                  // given, or has a default
  bool given(const std::string& name) const { return given_.count(name) > 0; }  // on the command line
  std::string text(const std::string& name) const;          // UsageError when absent
  std::string text_or(const std::string& name, const std::string& fallback) const;
  int64_t integer(const std::string& name) const;           // UsageError unless a whole number
  double number(const std::string& name) const;             // UsageError unless a finite number
  bool flag_set(const std::string& name) const;
  std::vector<std::string> all(const std::string& name) const;

  std::string usage() const;  // the --help text
  [[noreturn]] void fail(const std::string& message) const { throw UsageError(command_ + ": " + message, usage()); }

 private:
  struct Spec {
    std::string name, value_name, help, default_value;
    bool is_flag = false, is_repeated = false, is_required = false;
  };
  const Spec& spec(const std::string& name) const;
  std::string command_, summary_, epilog_;
  std::vector<Spec> specs_;
  std::map<std::string, std::vector<std::string>> given_;
};

// A progress line for long work: done/total, the rate, the ETA and a
// caller's metrics ("loss 2.31"). On a terminal it redraws one line (at most
// ten times a second); otherwise, e.g. into a log file, it prints a line
// every `log_seconds`.
class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "it", double log_seconds = 15);
  ~Progress();
  void update(int64_t done, const std::string& metrics = "");
  void set_total(int64_t total) { total_ = total; }
  void finish(const std::string& metrics = "");  // the final line, with the total time

 private:
  void draw(bool final);
  using Clock = std::chrono::steady_clock;
  std::string label_, unit_, metrics_;
  int64_t total_, done_ = 0;
  double log_seconds_;
  bool tty_, finished_ = false;
  Clock::time_point start_, last_draw_;
};

// "1:05", "12:00:03"
std::string format_duration(double seconds);

// One JSON object per line, flushed after each, appended to the file (a
// resumed run continues its log).
class JsonlLog {
 public:
  explicit JsonlLog(const std::string& path);  // st::Error naming the file when it cannot be opened
  ~JsonlLog();
  JsonlLog(const JsonlLog&) = delete;
  JsonlLog& operator=(const JsonlLog&) = delete;
  void write(const std::string& json_object_text);

 private:
  std::FILE* file_;
  std::string path_;
};

// Ctrl-C: the first SIGINT (or SIGTERM) only sets a flag that long loops poll, so
// they can save their state and stop cleanly; a second one ends the program.
void catch_interrupts();
bool interrupted();

// Creates a directory and its parents; st::Error naming it when that fails.
void make_directories(const std::string& path);

// --device: "cpu" or "cuda" (UsageError otherwise). Asking for cuda in a
// build without the CUDA backend, or on a machine without a GPU, is a
// DeviceError that says which.
void add_device_option(Args& args);
Device device_of(const Args& args);

}  // namespace st::cli
