// The command line end to end on a small demo data set: data, train (from
// scratch, then SmartTrim from its weights), eval, infer, viz, bench; Ctrl-C
// and resume; bad arguments and bad inputs. Runs build/smarttrim ($SMARTTRIM_BIN).
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "data/image.h"
#include "tests/support.h"

namespace fs = std::filesystem;
using st::testing::CommandResult;
using st::testing::TempDir;

namespace {

CommandResult smarttrim(const std::string& args) {
  return st::testing::run_command(st::testing::smarttrim_binary() + " " + args);
}

// One small data set and a trained pair of models, shared by the test cases (made once).
struct Pipeline {
  TempDir dir;
  std::string data, common, full, trimmed;
  CommandResult made_data, trained_full, trained_trim;
  Pipeline() {
    data = dir / "data";
    common = " --vocab " + data + "/vocab.txt --answers " + data + "/vqa/answers.json --data " + data + "/vqa";
    made_data = smarttrim("data fashion --out " + data +
                          " --train-images 40 --val-images 12 --test-images 12 --nlvr2-train 8 --nlvr2-dev 4 "
                          "--nlvr2-test 4 --seed 3");
    full = dir / "full";
    trained_full = smarttrim("train --config configs/demo-fashion.json" + common + " --out " + full +
                             " --steps 4 --batch 8 --lr 1e-3");
    trimmed = dir / "trim";
    trained_trim = smarttrim("train --config configs/demo-fashion-smarttrim.json --init " + full + "/model.st" +
                             common + " --out " + trimmed + " --steps 3 --batch 8 --target 0.5");
  }
};

Pipeline& pipeline() {
  static Pipeline p;
  return p;
}

// `smarttrim eval` of the trimmed model on the test split, with more options.
CommandResult eval_trimmed(const Pipeline& p, const std::string& options) {
  return smarttrim("eval --model " + p.trimmed + "/model.st" + p.common + " --split test " + options);
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

}  // namespace

TEST_CASE("cli pipeline: data, train from scratch, SmartTrim from its weights") {
  Pipeline& p = pipeline();
  INFO(p.made_data.output);
  REQUIRE(p.made_data.status == 0);
  CHECK(fs::exists(p.data + "/vqa/answers.json"));
  INFO(p.trained_full.output);
  REQUIRE(p.trained_full.status == 0);
  for (const char* f : {"model.st", "checkpoint.st", "answers.json", "log.jsonl"}) CHECK(fs::exists(p.full + "/" + f));
  // the log: a start line, then one line per step with the losses
  std::ifstream log(p.full + "/log.jsonl");
  std::string line;
  int steps = 0;
  std::getline(log, line);
  CHECK(nlohmann::json::parse(line)["event"] == "start");
  while (std::getline(log, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    CHECK(j["step"] == steps++);
    CHECK(j["task_loss"].get<double>() > 0);
  }
  CHECK(steps == 4);
  INFO(p.trained_trim.output);
  REQUIRE(p.trained_trim.status == 0);
  CHECK(p.trained_trim.output.find("trimmer tensors start fresh") != std::string::npos);
  CHECK(p.trained_trim.output.find("warning") == std::string::npos);
}

TEST_CASE("cli pipeline: a target below the trimmers' lowest FLOPs ratio is warned about") {
  Pipeline& p = pipeline();
  REQUIRE(p.trained_full.status == 0);
  // the patch embedding and the text encoder are never trimmed: well over 10% of the demo model's work
  CommandResult low = smarttrim("train --config configs/demo-fashion-smarttrim.json --init " + p.full + "/model.st" +
                                p.common + " --out " + (p.dir / "low") + " --steps 1 --batch 8 --target 0.1");
  INFO(low.output);
  CHECK(low.status == 0);
  CHECK(low.output.find("warning: target 0.100 is below 0.") != std::string::npos);
}

TEST_CASE("cli pipeline: eval writes the promised JSON keys; per-example costs add up") {
  Pipeline& p = pipeline();
  REQUIRE(p.trained_trim.status == 0);
  const std::string json = p.dir / "eval.json";
  CommandResult r = eval_trimmed(p, "--json " + json + " --batch 5 --latency-examples 2");
  INFO(r.output);
  REQUIRE(r.status == 0);
  const nlohmann::json j = read_json(json);
  for (const char* key : {"accuracy", "gflops_mean", "flops_ratio_mean", "examples", "latency_ms_batch1"})
    CHECK(j.contains(key));
  CHECK(j.contains("throughput_batch5"));
  const int64_t n = j["examples"];
  CHECK(n == 12 * 4);  // every test question (the generator asks 4 per scene)
  CHECK(j["gflops"].size() == size_t(n));
  double sum = 0;
  for (double g : j["gflops"]) sum += g;
  CHECK(j["gflops_mean"].get<double>() == doctest::Approx(sum / double(n)));
  CHECK(j["accuracy"].get<double>() >= 0);
  CHECK(j["accuracy"].get<double>() <= 1);
  // the per-type means, weighted by their counts, give the overall ones
  int64_t typed = 0;
  double accuracy_sum = 0, ratio_sum = 0;
  for (const auto& [type, count] : j["examples_by_type"].items()) {
    typed += count.get<int64_t>();
    accuracy_sum += count.get<double>() * j["accuracy_by_type"][type].get<double>();
    ratio_sum += count.get<double>() * j["flops_ratio_by_type"][type].get<double>();
  }
  CHECK(j["examples_by_type"].size() >= 2);
  CHECK(typed == n);
  CHECK(accuracy_sum / double(n) == doctest::Approx(j["accuracy"].get<double>()));
  CHECK(ratio_sum / double(n) == doctest::Approx(j["flops_ratio_mean"].get<double>()));

  // at full capacity the ratio is 1 for every example; the top-k baseline keeps less
  CommandResult f = eval_trimmed(p, "--full --json " + json + " --latency-examples 1");
  REQUIRE(f.status == 0);
  const nlohmann::json at_full = read_json(json);  // named: a temporary would die before the loop reads it
  for (double ratio : at_full["flops_ratio"]) CHECK(ratio == doctest::Approx(1.0));
  CommandResult k = eval_trimmed(p, "--keep-ratio 0.3 --json " + json + " --latency-examples 1");
  REQUIRE(k.status == 0);
  CHECK(read_json(json)["method"] == "topk");
  CHECK(read_json(json)["flops_ratio_mean"].get<double>() < 0.8);
}

TEST_CASE("cli pipeline: eval --target-ratio chooses theta on the val split so the ratio meets the target") {
  Pipeline& p = pipeline();
  REQUIRE(p.trained_trim.status == 0);
  const std::string json = p.dir / "calibrated.json";
  // the trimmers trained 3 steps and keep nearly everything at theta 0; the target needs a higher theta
  CommandResult r = eval_trimmed(p, "--json " + json + " --latency-examples 1 --target-ratio 0.6");
  INFO(r.output);
  REQUIRE(r.status == 0);
  const nlohmann::json j = read_json(json);
  CHECK(j["calibration_split"] == "val");
  CHECK(j["target_ratio"].get<double>() == doctest::Approx(0.6));
  // 12 val scenes, 48 questions: the mean moves in small steps, so the target is met closely
  CHECK(j["calibration_ratio"].get<double>() == doctest::Approx(0.6).epsilon(0.03));
  CHECK(j["token_threshold"].get<double>() > 0);
  CHECK(j["token_threshold"] == j["head_threshold"]);
  CHECK(j["flops_ratio_mean"].get<double>() == doctest::Approx(0.6).epsilon(0.15));  // held-out scenes: close, not equal
  // a given head threshold stays; the token threshold alone meets the target
  CommandResult h = eval_trimmed(p, "--json " + json + " --latency-examples 1 --target-ratio 0.6 --head-theta -1.5");
  INFO(h.output);
  REQUIRE(h.status == 0);
  CHECK(read_json(json)["head_threshold"].get<double>() == doctest::Approx(-1.5));
  CHECK(read_json(json)["calibration_ratio"].get<double>() == doctest::Approx(0.6).epsilon(0.03));
  for (const char* bad : {" --target-ratio 0.6 --theta 1", " --target-ratio 1.5", " --target-ratio 0.6 --full",
                          " --target-ratio 0.6 --calibration-split test"}) {
    CommandResult b = eval_trimmed(p, bad);
    INFO(bad << ": " << b.output);
    CHECK(b.status == 2);
  }
}

TEST_CASE("cli pipeline: infer, viz and bench") {
  Pipeline& p = pipeline();
  REQUIRE(p.trained_trim.status == 0);
  std::string image_path;  // any test scene
  for (const auto& e : fs::directory_iterator(p.data + "/vqa/images"))
    if (e.path().filename().string().find("fashion_test") != std::string::npos) image_path = e.path().string();
  REQUIRE(!image_path.empty());
  const std::string model = " --model " + p.trimmed + "/model.st --vocab " + p.data + "/vocab.txt --image " + image_path;
  CommandResult i = smarttrim("infer" + model + " --question 'is there a bag?'");
  INFO(i.output);
  REQUIRE(i.status == 0);
  CHECK(i.output.find("answer: ") != std::string::npos);
  CHECK(i.output.find("vit") != std::string::npos);
  CHECK(i.output.find("GFLOPs") != std::string::npos);

  const std::string png = p.dir / "viz.png";
  CommandResult v = smarttrim("viz" + model + " --question 'is there a bag?' --question 'how many shirts are there?' --out " + png);
  INFO(v.output);
  REQUIRE(v.status == 0);
  const st::Image figure = st::load_image(png);
  CHECK(figure.width > 96 * 3);

  CommandResult b = smarttrim("bench --model " + p.trimmed + "/model.st" + p.common + " --split test --repeats 1");
  INFO(b.output);
  REQUIRE(b.status == 0);
  CHECK(b.output.find("speed-up") != std::string::npos);
}

TEST_CASE("cli pipeline: Ctrl-C saves a checkpoint and --resume finishes the run") {
  Pipeline& p = pipeline();
  REQUIRE(p.trained_full.status == 0);
  const std::string run = p.dir / "interrupted";
  // SIGINT once the run has logged its first step (a fixed delay would race
  // the program's start on a slow or busy machine); the run is far too long
  // to finish by itself.
  const std::string train = st::testing::smarttrim_binary() + " train --config configs/demo-fashion.json" + p.common +
                            " --out " + run + " --steps 100000 --batch 4";
  CommandResult r = st::testing::run_command(
      "bash -c '" + train + " & pid=$!; "
      "for i in $(seq 1200); do [ \"$(wc -l < " + run + "/log.jsonl 2>/dev/null)\" -ge 2 ] 2>/dev/null && break; sleep 0.1; done; "
      "kill -INT $pid; "
      "for i in $(seq 600); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; "  // 60 s to stop, or killed (137)
      "kill -KILL $pid 2>/dev/null; wait $pid'");
  INFO(r.output);
  CHECK(r.status == 130);
  const size_t at = r.output.find("interrupted at step ");
  REQUIRE(at != std::string::npos);
  const long step = std::stol(r.output.substr(at + 20));
  CHECK(fs::exists(run + "/checkpoint.st"));
  CHECK_FALSE(fs::exists(run + "/checkpoint.st.tmp"));
  CommandResult resumed = smarttrim("train --resume " + run + "/checkpoint.st" + p.common + " --out " + run +
                                    " --steps " + std::to_string(step + 2) + " --batch 4");
  INFO(resumed.output);
  CHECK(resumed.status == 0);
  CHECK(fs::exists(run + "/model.st"));
}

TEST_CASE("cli pipeline: bad arguments exit 2 with the usage; bad inputs exit 1 with one message") {
  Pipeline& p = pipeline();
  for (const char* args : {"train", "train --steps 3", "eval --model", "train --out x --config c --steps 3x",
                           "data", "data mnist --out x", "infer --model m --vocab v", "viz --bogus",
                           "bench --repeats", "eval --model m --vocab v --method bogus"}) {
    CommandResult r = smarttrim(args);
    INFO(args << "\n" << r.output);
    CHECK(r.status == 2);
    CHECK(r.output.find("usage: smarttrim") != std::string::npos);
  }
  // a model whose answer list does not fit, a missing data set, a missing model
  CommandResult missing = smarttrim("eval --model " + p.dir / "none.st" + p.common);
  CHECK(missing.status == 1);
  CHECK(missing.output.find("none.st") != std::string::npos);
  CommandResult no_data = smarttrim("eval --model " + p.full + "/model.st --vocab " + p.data +
                                    "/vocab.txt --data " + p.dir / "nowhere");
  CHECK(no_data.status == 1);
  CHECK(no_data.output.find("nowhere") != std::string::npos);
  // a --set key the config does not have
  CommandResult typo = smarttrim("train --config configs/demo-fashion.json --set dropot=0" + p.common + " --out " +
                                 p.dir / "typo" + " --steps 1");
  CHECK(typo.status == 1);
  CHECK(typo.output.find("unknown key 'dropot'") != std::string::npos);
  // --target without trimmers
  CommandResult target = smarttrim("train --config configs/demo-fashion.json" + p.common + " --out " + p.dir / "t" +
                                   " --steps 1 --target 0.5");
  CHECK(target.status == 2);
  CHECK(target.output.find("--target needs a model with trimmers") != std::string::npos);
  CommandResult shards = smarttrim("train --config configs/demo-fashion.json" + p.common + " --out " + p.dir / "s" +
                                   " --steps 1 --shards -1");
  CHECK(shards.status == 2);
  CHECK(shards.output.find("--shards must be 0") != std::string::npos);
  CHECK(!std::filesystem::exists(p.dir / "s"));
}

TEST_CASE("cli pipeline: --device cuda trains on a GPU, and without one says so and writes nothing") {
  Pipeline& p = pipeline();
  const std::string out = p.dir / "on_cuda";
  const std::string args = "train --config configs/demo-fashion.json --steps 2 --checkpoint-every 0 --device cuda" +
                           p.common + " --out " + out;
  const bool gpu = smarttrim("devices").output.find("cuda:0") != std::string::npos;
  CommandResult r = smarttrim(args);
  INFO(r.output);
  if (gpu) {
    CHECK(r.status == 0);
    CHECK(r.output.find("on cuda") != std::string::npos);
    CHECK(std::filesystem::exists(out + "/model.st"));
  } else {
    CHECK(r.status == 1);
    CHECK((r.output.find("no GPU is available") != std::string::npos ||
           r.output.find("no CUDA backend") != std::string::npos));
    CHECK(!std::filesystem::exists(out));
  }
  CommandResult bad = smarttrim("train --device tpu --config configs/demo-fashion.json" + p.common + " --out " + out);
  CHECK(bad.status == 2);
  CHECK(bad.output.find("--device must be cpu or cuda") != std::string::npos);
}

TEST_CASE("cli pipeline: eval, infer and bench --device cuda run the packed path on a GPU, or say there is none") {
  Pipeline& p = pipeline();
  const std::string on_gpu = p.dir / "eval_cuda.json", on_cpu = p.dir / "eval_cpu.json";
  const bool gpu = smarttrim("devices").output.find("cuda:0") != std::string::npos;
  CommandResult r = eval_trimmed(p, "--device cuda --json " + on_gpu);
  INFO(r.output);
  std::string image_path;  // any test scene
  for (const auto& e : fs::directory_iterator(p.data + "/vqa/images"))
    if (e.path().filename().string().find("fashion_test") != std::string::npos) image_path = e.path().string();
  CommandResult asked = smarttrim("infer --model " + p.trimmed + "/model.st --vocab " + p.data + "/vocab.txt --image " +
                                  image_path + " --question 'is there a bag?' --device cuda");
  INFO(asked.output);
  if (gpu) {
    REQUIRE(r.status == 0);
    REQUIRE(eval_trimmed(p, "--json " + on_cpu).status == 0);
    const nlohmann::json g = read_json(on_gpu), c = read_json(on_cpu);
    CHECK(g["device"] == "cuda");
    CHECK(g["examples"] == c["examples"]);
    // TF32 GEMMs: a decision or an answer right at its threshold may flip, nothing more
    CHECK(std::fabs(g["flops_ratio_mean"].get<double>() - c["flops_ratio_mean"].get<double>()) < 0.01);
    CHECK(std::fabs(g["accuracy"].get<double>() - c["accuracy"].get<double>()) < 0.02);
    CHECK(asked.status == 0);
    CHECK(asked.output.find("answer:") != std::string::npos);
  } else {
    CHECK(r.status == 1);
    CHECK((r.output.find("no GPU is available") != std::string::npos ||
           r.output.find("no CUDA backend") != std::string::npos));
    CHECK(!std::filesystem::exists(on_gpu));
    CHECK(asked.status == 1);
  }
  CommandResult bench =
      smarttrim("bench --model " + p.trimmed + "/model.st" + p.common + " --split test --repeats 1 --device cuda");
  CHECK(bench.status == (gpu ? 0 : 1));
}

TEST_CASE("cli pipeline: an unreadable image is skipped and counted, not fatal") {
  Pipeline& p = pipeline();
  REQUIRE(p.trained_full.status == 0);
  // a copy of the test split with one image truncated and one removed
  const std::string copy = p.dir / "broken";
  fs::create_directories(copy + "/images");
  for (const char* f : {"test_questions.json", "test_annotations.json"})
    fs::copy_file(p.data + "/vqa/" + f, copy + "/" + f);
  int n = 0;
  for (const auto& e : fs::directory_iterator(p.data + "/vqa/images")) {
    const std::string name = e.path().filename().string();
    if (name.find("fashion_test") == std::string::npos) continue;
    n++;
    if (n == 1) continue;  // removed
    fs::copy_file(e.path(), copy + "/images/" + name);
    if (n == 2) fs::resize_file(copy + "/images/" + name, 40);  // truncated
  }
  CommandResult r = smarttrim("eval --model " + p.full + "/model.st --vocab " + p.data + "/vocab.txt --answers " +
                              p.data + "/vqa/answers.json --data " + copy + " --split test --latency-examples 1");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("8 skipped") != std::string::npos);  // two scenes, four questions each
}

TEST_CASE("cli pipeline: NLVR2 trains and evaluates through the same commands") {
  Pipeline& p = pipeline();
  REQUIRE(p.made_data.status == 0);
  const std::string run = p.dir / "nlvr2";
  const std::string data = " --task nlvr2 --vocab " + p.data + "/vocab.txt --data " + p.data + "/nlvr2";
  CommandResult t = smarttrim("train --config configs/demo-fashion-smarttrim.json" + data + " --out " + run +
                              " --steps 2 --batch 4 --target 0.5");
  INFO(t.output);
  REQUIRE(t.status == 0);
  CHECK_FALSE(fs::exists(run + "/answers.json"));  // no answer list outside VQA
  const std::string json = p.dir / "nlvr2.json";
  CommandResult e = smarttrim("eval --model " + run + "/model.st" + data + " --split dev --json " + json +
                              " --latency-examples 1");
  INFO(e.output);
  REQUIRE(e.status == 0);
  const nlohmann::json j = read_json(json);
  CHECK(j["examples"] == 4);
  CHECK(j["task"] == "nlvr2");
  for (double ratio : j["flops_ratio"]) CHECK(ratio > 0);
}
