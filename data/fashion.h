// A small visual question answering data set made from real photographs of
// clothes, written in the public VQA v2 and NLVR2 formats, so that the
// loaders that read a user's real VQA v2 / NLVR2 data read ours unchanged.
// `smarttrim data fashion --out DIR` calls generate_fashion_dataset().
//
// Source. Fashion-MNIST (Zalando Research, MIT licence): 70,000 grey 28x28
// photographs of clothes in 10 classes, as Debian's dataset-fashion-mnist
// installs them (IDX files, gzip-compressed) under kFashionMnistDir.
//
// Scenes. A square black canvas of image_size pixels (default 96) holds a
// 3x3 grid of cells of image_size / 3 pixels (32). An item is one Fashion-
// MNIST photograph pasted into a cell, at a random offset that keeps it
// inside the cell, so items never overlap. On canvases of 192 pixels and
// more the photographs are enlarged by a whole factor (nearest neighbour,
// item_side()) so that they still fill most of their cell, as at 96. Each
// item has a colour from a small palette: white (the untinted grey
// photograph), red, green, blue or yellow; a tinted pixel is
// grey * colour / 255. A third of the scenes are sparse (1-2 items), a
// third crowded (6-9), the rest in between (3-5), so an adaptive token
// pruner has empty background to discover, more of it in some images than
// in others. A scene draws its items from at most four classes, so counts
// above one are common.
//
// Held-out images. Training scenes use only the Fashion-MNIST training
// file; validation scenes (VQA val, NLVR2 dev) only the first half of the
// t10k file and test scenes only its second half, so no photograph of a
// held-out scene was ever seen in training.
//
// Questions (VQA), one of five types, each with one correct answer from a
// small closed set (fashion_answers(): yes, no, 0..9, class names, colours):
//   existence   "is there a bag?" / "is there a red bag?"              yes/no
//               yes half the time; a "no" names an absent class (or an
//               absent colour of a present class), never a trivial one.
//   attribute   "what colour is the sandal?"   (exactly one sandal)    other
//   counting    "how many shirts are there?"   (0 about a fifth of the time) number
//   spatial     "what is to the left of the red bag?", "... to the right
//               of ...", "what is above ...", "what is below ..."       other
//               The reference ("the bag", or "the red bag" when there are
//               several bags) names exactly one item; the answer is the
//               class of the item in the directly adjacent cell (same row,
//               column - 1 or + 1; same column, row - 1 or + 1). Asked only
//               when that cell holds an item, so the answer is unique.
//   comparison  "are there more sneakers than coats?" / "are there fewer
//               ... than ...?"  (at least one of the two is present)     yes/no
// Yes/no questions aim for yes half the time. question_type holds these
// five names (real VQA v2 keeps the question's first words there).
//
// Statements (NLVR2) about a pair of scenes, true or false:
//   "the left image contains more bags than the right image" (and fewer,
//   and right/left), "both images contain a sneaker", "neither image
//   contains a coat", "exactly one image contains a red dress", "there are
//   exactly three shirts in total", "the left image contains more objects
//   than the right image". As in NLVR2, a sentence comes with two image
//   pairs, one for which it is true and one for which it is false (in
//   random order), so the sentence alone tells nothing about the label.
//
// Output layout under DIR (files we write are overwritten; others are left):
//   vocab.txt          BERT WordPiece vocabulary: [CLS] [PAD] [SEP] [UNK] [MASK]
//                      (ids 0..4 mirror RoBERTa's <s> <pad> </s> <unk>, so
//                      pad_token_id is 1), every word the questions and
//                      statements use, then single characters and "##"
//                      characters so other words are spelled, not [UNK].
//   vqa/{s}_questions.json, vqa/{s}_annotations.json   for s in train, val, test
//                      (VQA v2: data_subtype "fashion_{s}", 10 identical answers)
//   vqa/images/COCO_fashion_{s}_%012d.png              (image ids unique across splits)
//   vqa/{s}_scenes.json                                what each image shows (CLEVR-like)
//   nlvr2/{train,dev,test}.json                        NLVR2 JSON Lines
//   nlvr2/images/{split}/{split}-{set}-{pair}-img0.png and -img1.png
//   nlvr2/{split}_scenes.json                          the scenes of each image
//   summary.json, README.md
// Images are written first, the JSON files after them (each atomically), and
// summary.json last: an interrupted run never leaves a partial JSON file,
// and a folder with summary.json holds a complete data set. Files of an
// earlier, larger run that this one does not write are left in place.
//
// Everything is a pure function of the seed: each scene draws from its own
// stream of st::Rng (Philox), so images can be made on several threads and
// the bytes are the same for any thread count.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "data/image.h"
#include "engine/rng.h"

namespace st::data {

constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
constexpr int kFashionSide = 28;  // a Fashion-MNIST photograph is 28 x 28 grey pixels
constexpr int kFashionClasses = 10;
constexpr int kFashionColours = 5;
constexpr int kGridCells = 3;  // the scene is a kGridCells x kGridCells grid

// One Fashion-MNIST file pair (images + labels), decompressed.
struct FashionMnist {
  std::vector<uint8_t> pixels;  // (size, 28, 28) grey, 0 = black background
  std::vector<uint8_t> labels;  // (size), each in 0..9
  int64_t size() const { return int64_t(labels.size()); }
  const uint8_t* image(int64_t i) const { return pixels.data() + i * kFashionSide * kFashionSide; }
};

// Reads {train,t10k}-images-idx3-ubyte.gz and {train,t10k}-labels-idx1-ubyte.gz
// from dir (uncompressed IDX files under the same names read too). A missing,
// truncated or corrupt file, a wrong magic number, sizes other than 28 x 28,
// image and label counts that differ, or a label outside 0..9 is a
// FormatError naming the file.
FashionMnist load_fashion_mnist(const std::string& dir, bool train);

// Names as the text spells them (lower case; "t-shirt" tokenizes as t - shirt).
const char* class_name(int cls);    // "t-shirt", "trouser", ..., "boot"
const char* class_plural(int cls);  // "t-shirts", "trousers", ..., "dresses", ...
const char* colour_name(int colour);  // "white", "red", "green", "blue", "yellow"
struct Rgb {
  uint8_t r, g, b;
};
Rgb colour_rgb(int colour);  // white is (255, 255, 255): the grey photograph unchanged

// Which Fashion-MNIST file a scene's photographs come from.
enum class FashionFile { Train, T10k };
const char* file_name(FashionFile file);  // "train", "t10k"

struct Scene {
  struct Item {
    int cls = 0;           // Fashion-MNIST class, 0..9
    int colour = 0;        // 0..4, see colour_name
    int row = 0, col = 0;  // its cell in the 3x3 grid
    int x = 0, y = 0;      // top-left pixel of its photograph (item_side() a side) on the canvas
    int64_t source_index = 0;  // which photograph of the source file
  };
  int image_size = 96;
  FashionFile source = FashionFile::Train;
  std::vector<Item> items;  // in reading order (row by row), at most one per cell

  int count(int cls) const;                    // items of that class
  int count(int cls, int colour) const;        // items of that class and colour
  const Item* at(int row, int col) const;      // the item in that cell, or nullptr
};

// The photographs a split may use: indices [first, end) of one file,
// grouped by class so a scene can ask for "a bag from this range".
struct ScenePool {
  const FashionMnist* images = nullptr;
  FashionFile file = FashionFile::Train;
  int64_t first = 0, end = 0;
  std::vector<std::vector<int64_t>> by_class;  // [class] -> indices in [first, end)
};
// Throws ArgumentError when the range is empty, outside the file, or lacks a class.
ScenePool make_scene_pool(const FashionMnist& images, FashionFile file, int64_t first, int64_t end);

// The side of an item on the canvas: 28 * max(1, image_size / 96) pixels.
int item_side(int image_size);

// A random scene (item count, classes, cells, offsets, colours, photographs).
// image_size must be at least 3 * 28 = 84.
Scene random_scene(const ScenePool& pool, int image_size, Rng& rng);
// The scene as 8-bit RGB: black canvas, each photograph tinted by its colour.
Image render_scene(const Scene& scene, const FashionMnist& images);

struct Question {
  std::string text;           // "how many bags are there?"
  std::string question_type;  // existence, attribute, counting, spatial, comparison
  std::string answer_type;    // "yes/no", "number", "other" (VQA v2's answer types)
  std::string answer;         // one of fashion_answers()
};
// Up to `count` different questions about the scene (fewer when the scene
// is too simple to have that many different questions).
std::vector<Question> ask_questions(const Scene& scene, int count, Rng& rng);

// The closed answer set in a fixed order: yes, no, 0..9, the class names, the colours.
std::vector<std::string> fashion_answers();
// The lines of vocab.txt (see the layout above).
std::vector<std::string> fashion_vocabulary();

struct FashionOptions {
  std::string source_dir = kFashionMnistDir;
  std::string out;  // created when missing
  uint64_t seed = 0;
  int image_size = 96;
  int train_images = 6000;
  int val_images = 1000;
  int test_images = 1000;
  int questions_per_image = 4;  // at most 999 (question_id = image_id * 1000 + k)
  int nlvr2_train = 2000;       // examples (sentence + image pair) per split
  int nlvr2_dev = 500;
  int nlvr2_test = 500;
};

struct FashionSummary {
  struct VqaSplit {
    std::string name;  // train, val, test
    int64_t images = 0;
    int64_t questions = 0;
    int64_t yes = 0, no = 0;  // answers of the yes/no questions
    std::map<std::string, int64_t> question_types;  // existence -> count, ...
    std::map<std::string, int64_t> answer_types;    // yes/no -> count, ...
  };
  struct Nlvr2Split {
    std::string name;  // train, dev, test
    int64_t examples = 0;
    int64_t true_labels = 0;
    std::map<std::string, int64_t> statement_types;
  };
  uint64_t seed = 0;
  int image_size = 0;
  std::vector<VqaSplit> vqa;      // train, val, test
  std::vector<Nlvr2Split> nlvr2;  // train, dev, test
  std::vector<std::string> answers;
  int64_t vocab_size = 0;
  int64_t images_written = 0;  // PNG files
};

// Called now and then from the calling thread with the images made so far.
using FashionProgress = std::function<void(int64_t done, int64_t total)>;

// Writes the whole data set under options.out (layout above). Bad options
// (empty out, sizes that are not positive, image_size below 84, too many
// questions per image) are an ArgumentError, as is an out directory that
// cannot be created; a missing or corrupt source file is a FormatError.
// Nothing is written before the options and the source files are checked.
FashionSummary generate_fashion_dataset(const FashionOptions& options,
                                        const FashionProgress& progress = {});

}  // namespace st::data
