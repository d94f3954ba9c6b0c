#include "apps/cli.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>

#include "engine/error.h"
#ifdef SMARTTRIM_CUDA
#include "cuda/runtime.h"
#endif

namespace st::cli {

// --- options

Args& Args::option(const std::string& name, const std::string& value_name, const std::string& help,
                   const std::string& default_value) {
  specs_.push_back({name, value_name, help, default_value});
  return *this;
}

Args& Args::repeated(const std::string& name, const std::string& value_name, const std::string& help) {
  specs_.push_back({name, value_name, help, ""});
  specs_.back().is_repeated = true;
  return *this;
}

Args& Args::flag(const std::string& name, const std::string& help) {
  specs_.push_back({name, "", help, ""});
  specs_.back().is_flag = true;
  return *this;
}

Args& Args::required() {
  specs_.back().is_required = true;
  return *this;
}

Args& Args::epilog(const std::string& text) {
  epilog_ = text;
  return *this;
}

const Args::Spec& Args::spec(const std::string& name) const {
  for (const Spec& s : specs_)
    if (s.name == name) return s;
  throw std::logic_error("undeclared option --" + name);  // a bug in the subcommand, not in its input
}

bool Args::parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; i++) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(usage().c_str(), stdout);
      return false;
    }
    if (arg.rfind("--", 0) != 0) fail("unexpected argument '" + arg + "'");
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) value = name.substr(eq + 1), name = name.substr(0, eq);
    const Spec* s = nullptr;
    for (const Spec& candidate : specs_)
      if (candidate.name == name) s = &candidate;
    if (!s) fail("unknown option --" + name);
    if (s->is_flag) {
      if (inline_value) fail("--" + name + " takes no value");
      given_[name] = {"1"};
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= argc) fail("--" + name + " needs a value (" + s->value_name + ")");
      value = argv[++i];
    }
    if (s->is_repeated) given_[name].push_back(value);
    else if (given_.count(name)) fail("--" + name + " is given twice");
    else given_[name] = {value};
  }
  for (const Spec& s : specs_)
    if (s.is_required && !given_.count(s.name)) fail("--" + s.name + " is required");
  return true;
}

bool Args::has(const std::string& name) const { return given_.count(name) || !spec(name).default_value.empty(); }

std::string Args::text(const std::string& name) const {
  auto it = given_.find(name);
  if (it != given_.end()) return it->second.back();
  const Spec& s = spec(name);
  if (s.default_value.empty()) fail("--" + name + " is required here");
  return s.default_value;
}

std::string Args::text_or(const std::string& name, const std::string& fallback) const {
  return has(name) ? text(name) : fallback;
}

int64_t Args::integer(const std::string& name) const {
  const std::string v = text(name);
  errno = 0;
  char* end = nullptr;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno == ERANGE) fail("--" + name + " wants a whole number, got '" + v + "'");
  return n;
}

double Args::number(const std::string& name) const {
  const std::string v = text(name);
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !std::isfinite(x)) fail("--" + name + " wants a number, got '" + v + "'");
  return x;
}

bool Args::flag_set(const std::string& name) const { return spec(name).is_flag && given_.count(name); }

std::vector<std::string> Args::all(const std::string& name) const {
  auto it = given_.find(name);
  return it == given_.end() ? std::vector<std::string>{} : it->second;
}

std::string Args::usage() const {
  std::string out = "usage: " + command_ + " [options]\n\n" + summary_ + "\n\noptions:\n";
  for (const Spec& s : specs_) {
    std::string left = "  --" + s.name + (s.is_flag ? "" : " " + s.value_name);
    if (left.size() < 26) left.resize(26, ' ');
    else left += "\n" + std::string(26, ' ');
    std::string right = s.help;
    if (s.is_required) right += " (required)";
    if (s.is_repeated) right += " (repeatable)";
    if (!s.default_value.empty()) right += " [" + s.default_value + "]";
    out += left + right + "\n";
  }
  out += "  --help                  this message\n";
  if (!epilog_.empty()) out += "\n" + epilog_ + "\n";
  return out;
}

// --- progress

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

Progress::Progress(std::string label, int64_t total, std::string unit, double log_seconds)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      log_seconds_(log_seconds),
      tty_(::isatty(STDERR_FILENO)),
      start_(Clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  if (!finished_ && tty_ && done_ > 0) std::fputc('\n', stderr);  // leave the cursor on a fresh line
}

void Progress::update(int64_t done, const std::string& metrics) {
  done_ = done;
  metrics_ = metrics;
  const double since = std::chrono::duration<double>(Clock::now() - last_draw_).count();
  if (since >= (tty_ ? 0.1 : log_seconds_)) draw(false);
}

void Progress::finish(const std::string& metrics) {
  if (!metrics.empty()) metrics_ = metrics;
  draw(true);
  finished_ = true;
}

void Progress::draw(bool final) {
  last_draw_ = Clock::now();
  const double elapsed = std::chrono::duration<double>(last_draw_ - start_).count();
  const double rate = elapsed > 0 ? double(done_) / elapsed : 0;
  std::string line = label_ + " ";
  if (total_ > 0) {
    const int width = 24;
    const int filled = int(double(width) * double(std::min(done_, total_)) / double(total_));
    line += '[';  // appended piece by piece: GCC 12 warns falsely (-Wrestrict) on "literal" + string
    line.append(size_t(filled), '#').append(size_t(width - filled), '.').append("] ");
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, "%lld", (long long)done_);
  line += buf;
  if (total_ > 0) line.append("/").append(std::to_string(total_));
  std::snprintf(buf, sizeof buf, " %.1f %s/s", rate, unit_.c_str());
  line += buf;
  if (final) line.append(" in ").append(format_duration(elapsed));
  else if (total_ > 0 && rate > 0) line.append(" ETA ").append(format_duration(double(total_ - done_) / rate));
  if (!metrics_.empty()) line.append(" ").append(metrics_);
  if (tty_) std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  else std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

// --- JSON Lines

JsonlLog::JsonlLog(const std::string& path) : file_(std::fopen(path.c_str(), "a")), path_(path) {
  if (!file_) throw Error("cannot open the log '" + path + "': " + std::strerror(errno));
}

JsonlLog::~JsonlLog() { std::fclose(file_); }

void JsonlLog::write(const std::string& json_object_text) {
  if (std::fprintf(file_, "%s\n", json_object_text.c_str()) < 0 || std::fflush(file_) != 0)
    throw Error("cannot write the log '" + path_ + "': " + std::strerror(errno));
}

// --- interrupts

namespace {
std::atomic<bool> g_interrupted{false};

extern "C" void on_interrupt(int signal) {
  if (g_interrupted.exchange(true)) {  // the second one: stop now
    std::signal(signal, SIG_DFL);
    std::raise(signal);
  }
}
}  // namespace

void catch_interrupts() {
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
}

bool interrupted() { return g_interrupted.load(); }

void make_directories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec || !std::filesystem::is_directory(path)) throw Error("cannot create the directory '" + path + "': " + ec.message());
}

void add_device_option(Args& args) {
  args.option("device", "cpu|cuda", "where the model runs", "cpu");
}

Device device_of(const Args& args) {
  const std::string name = args.text("device");
  if (name == "cpu") return Device::CPU;
  if (name != "cuda") args.fail("--device must be cpu or cuda, got '" + name + "'");
#ifdef SMARTTRIM_CUDA
  if (cuda::device_count() == 0)
    throw DeviceError("--device cuda: no GPU is available on this machine (smarttrim devices lists what there is)");
  return Device::CUDA;
#else
  throw DeviceError("--device cuda: this build has no CUDA backend (nvcc was not found at build time)");
#endif
}

}  // namespace st::cli
