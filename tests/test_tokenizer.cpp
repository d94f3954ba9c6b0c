// The tokenizers (data/tokenizer.h) on hand-written vocabularies in
// tests/data/tokenizer/, every expected id worked out by hand below.
//
// bpe_vocab.json: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 4; then the 256
// byte symbols, byte b at id 5 + b (so 'h' = 0x68 is 109, a space 'Ġ' is
// 37, '\n' 'Ċ' is 15); then the merged tokens 261.. in merge order:
//   rank  merge        token    id        rank  merge        token    id
//    0    Ġ t          Ġt       261        11   Ġwor ld      Ġworld   272
//    1    h e          he       262        12   t h          th       273
//    2    Ġt he        Ġthe     263        13   ' s          's       274
//    3    t he         the      264        14   1 2          12       275
//    4    l l          ll       265        15   Ġ 1          Ġ1       276
//    5    he ll        hell     266        16   Ġ Ġ          ĠĠ       277
//    6    hell o       hello    267        17   Ã ©          Ã©       278  (é's bytes C3 A9)
//    7    Ġ w          Ġw       268        18   c a          ca       279
//    8    o r          or       269        19   ca f         caf      280
//    9    Ġw or        Ġwor     270        20   caf Ã©       cafÃ©    281
//   10    l d          ld       271        21   x y          (xy is not in the vocabulary: <unk>)
//
// wordpiece_vocab.txt (id = line - 1): [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3,
// [MASK] 4, the 5, cat 6, sat 7, on 8, mat 9, . 10, , 11, ! 12, ' 13, s 14,
// un 15, ##aff 16, ##able 17, hello 18, world 19, cafe 20, ##s 21, 1 22,
// ##2 23, ##3 24, 日 25, 本 26, a 27, ##b 28, ab 29, ##c 30, naive 31, ? 32,
// $ 33, aeiou 34, The 35, Café 36, ##9 37, 한 as jamo (U+1112 U+1161 U+11AB)
// 38, か 39, ελλαδα 40, елка 41.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "engine/error.h"
#include "tests/support.h"

using st::data::BpeTokenizer;
using st::data::Padding;
using st::data::WordPieceTokenizer;
using Ids = std::vector<int32_t>;

namespace {

using st::testing::format_error;

const std::string kDir = "tests/data/tokenizer/";

BpeTokenizer bpe() { return BpeTokenizer(kDir + "bpe_vocab.json", kDir + "bpe_merges.txt"); }
WordPieceTokenizer bert(bool uncased = true) { return WordPieceTokenizer(kDir + "wordpiece_vocab.txt", uncased); }

int32_t byte_id(unsigned char b) { return 5 + int32_t(b); }  // a byte symbol's id in bpe_vocab.json

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// A file under the temp dir holding the given bytes; removed after.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& bytes, const std::string& suffix = ".txt") {
    static int counter = 0;
    path = (std::filesystem::temp_directory_path() /
            ("smarttrim_tok_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + suffix))
               .string();
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), std::streamsize(bytes.size()));
  }
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path, ec);
  }
};

}  // namespace

// ---------------------------------------------------------------- byte-level BPE

TEST_CASE("tokenizer: BPE loads the vocabulary, its special ids and merges") {
  const BpeTokenizer t = bpe();
  CHECK(t.vocab_size() == 282);
  CHECK(t.special().begin == 0);
  CHECK(t.special().pad == 1);
  CHECK(t.special().end == 2);
  CHECK(t.special().unk == 3);
  CHECK(t.special().mask == 4);
  CHECK(t.token_id("Ġworld") == 272);
  CHECK(t.token_id("Ġ") == 37);
  CHECK_FALSE(t.token_id("xy").has_value());
  CHECK(t.token(281) == "cafÃ©");
  CHECK_FALSE(t.token(282).has_value());
}

TEST_CASE("tokenizer: BPE pre-tokenization follows GPT-2's pattern") {
  using P = std::vector<std::string>;
  CHECK(BpeTokenizer::pre_tokenize("") == P{});
  CHECK(BpeTokenizer::pre_tokenize("Hello world") == P{"Hello", " world"});
  // Contractions are their own pieces; "'S" is not one (the pattern is case-sensitive).
  CHECK(BpeTokenizer::pre_tokenize("I'm they'll it's x'd") == P{"I", "'m", " they", "'ll", " it", "'s", " x", "'d"});
  CHECK(BpeTokenizer::pre_tokenize("IT'S") == P{"IT", "'", "S"});
  // Letters, digits and symbols part; a space joins the piece after it.
  CHECK(BpeTokenizer::pre_tokenize("abc123 $9.99!?") == P{"abc", "123", " $", "9", ".", "99", "!?"});
  // A run of spaces gives its last space to the next word ...
  CHECK(BpeTokenizer::pre_tokenize("hello   world") == P{"hello", "  ", " world"});
  CHECK(BpeTokenizer::pre_tokenize("  hello") == P{" ", " hello"});
  // ... but keeps it at the end of the text, and a lone non-space whitespace stays alone.
  CHECK(BpeTokenizer::pre_tokenize("hello  ") == P{"hello", "  "});
  CHECK(BpeTokenizer::pre_tokenize("a\n\nb") == P{"a", "\n", "\n", "b"});
  CHECK(BpeTokenizer::pre_tokenize("a\tb") == P{"a", "\t", "b"});
  // Accented letters, Greek and CJK are letters; an emoji is a symbol.
  CHECK(BpeTokenizer::pre_tokenize("café αβ 日本 👍!") == P{"café", " αβ", " 日本", " 👍!"});
  // Invalid bytes are symbols: they join symbol runs and part from letters.
  CHECK(BpeTokenizer::pre_tokenize("a\xff\xfe b") == P{"a", "\xff\xfe", " b"});
}

TEST_CASE("tokenizer: BPE merges lowest rank first") {
  const BpeTokenizer t = bpe();
  using S = std::vector<std::string>;
  // t h e: (t,h) is rank 12, (h,e) rank 1, so "he" first, then "t he" (rank 3).
  CHECK(t.bpe("the") == S{"the"});
  // Ġ t h e: (Ġ,t) rank 0 first, then (h,e), then "Ġt he" (rank 2).
  CHECK(t.bpe(" the") == S{"Ġthe"});
  // l l l: only "l l"; occurrences join left to right.
  CHECK(t.bpe("lll") == S{"ll", "l"});
  // w o r l d: "o r" (8), then "l d" (10); "w or" has no merge without the space.
  CHECK(t.bpe("world") == S{"w", "or", "ld"});
  CHECK(t.bpe(" world") == S{"Ġworld"});
}

TEST_CASE("tokenizer: BPE encodes words, punctuation, digits and contractions") {
  const BpeTokenizer t = bpe();
  CHECK(t.encode("") == Ids{0, 2});                  // just <s> </s>
  CHECK(t.encode("hello world") == Ids{0, 267, 272, 2});  // hello, Ġworld
  CHECK(t.encode("the the") == Ids{0, 264, 263, 2});      // the, Ġthe
  // hello , Ġworld !  (',' is byte 44, '!' byte 33)
  CHECK(t.encode("hello, world!") == Ids{0, 267, byte_id(','), 272, byte_id('!'), 2});
  // "12" merges; " 123" is Ġ 1 2 3 where "1 2" (14) beats "Ġ 1" (15), leaving Ġ 12 3; " 1" is Ġ1.
  CHECK(t.tokenize("12 123 1") == Ids{275, 37, 275, byte_id('3'), 276});
  // "abc123": a b c (no merges) then 12 3.
  CHECK(t.tokenize("abc123") == Ids{byte_id('a'), byte_id('b'), byte_id('c'), 275, byte_id('3')});
  // it's: i t, then 's (rank 13). they'll: t h e y -> the y; ' l l -> ' ll.
  CHECK(t.tokenize("it's") == Ids{byte_id('i'), byte_id('t'), 274});
  CHECK(t.tokenize("they'll") == Ids{264, byte_id('y'), byte_id('\''), 265});
  CHECK(t.tokenize("IT'S") == Ids{byte_id('I'), byte_id('T'), byte_id('\''), byte_id('S')});
  // x y merges to "xy", which the vocabulary lacks: <unk>.
  CHECK(t.encode("xy") == Ids{0, 3, 2});
}

TEST_CASE("tokenizer: BPE leading, trailing and repeated whitespace") {
  const BpeTokenizer t = bpe();
  CHECK(t.tokenize("  hello") == Ids{37, 37, 267});          // " " then Ġ hello (no "Ġ hello" merge)
  CHECK(t.tokenize("hello  ") == Ids{267, 277});             // hello, ĠĠ
  CHECK(t.tokenize("hello   world") == Ids{267, 277, 272});  // hello, ĠĠ, Ġworld
  CHECK(t.tokenize("hello\nworld") == Ids{267, byte_id('\n'), byte_id('w'), 269, 271});  // Ċ, then w or ld
  CHECK(t.tokenize(" ") == Ids{37});
  CHECK(t.tokenize("\t\t") == Ids{byte_id('\t'), byte_id('\t')});
}

TEST_CASE("tokenizer: BPE Unicode: accents, CJK, emoji and invalid UTF-8 as bytes") {
  const BpeTokenizer t = bpe();
  // café = c a f C3 A9: "Ã ©" (17), then c a (18), ca f (19), caf Ã© (20).
  CHECK(t.tokenize("café") == Ids{281});
  CHECK(t.tokenize(" café") == Ids{37, 281});
  // 日 = E6 97 A5, 本 = E6 9C AC: no merges, one id per byte.
  CHECK(t.tokenize("日本") == Ids{byte_id(0xE6), byte_id(0x97), byte_id(0xA5), byte_id(0xE6), byte_id(0x9C), byte_id(0xAC)});
  // hi, then Ġ + 👍 = F0 9F 91 8D.
  CHECK(t.tokenize("hi 👍") == Ids{byte_id('h'), byte_id('i'), 37, byte_id(0xF0), byte_id(0x9F), byte_id(0x91), byte_id(0x8D)});
  // αβ = CE B1 CE B2 (one letter piece), then "!".
  CHECK(t.tokenize("αβ!") == Ids{byte_id(0xCE), byte_id(0xB1), byte_id(0xCE), byte_id(0xB2), byte_id('!')});
  // Invalid bytes encode as themselves: a, FF, then Ġ b.
  CHECK(t.tokenize("a\xff b") == Ids{byte_id('a'), byte_id(0xFF), 37, byte_id('b')});
  // A truncated sequence (E6 97 without its last byte) before a letter.
  CHECK(t.tokenize("\xe6\x97x") == Ids{byte_id(0xE6), byte_id(0x97), byte_id('x')});
}

TEST_CASE("tokenizer: BPE decode inverts encode, invalid UTF-8 included") {
  const BpeTokenizer t = bpe();
  std::string all_bytes;  // high to low, so no "xy" (whose merge has no token)
  for (int b = 255; b >= 0; b--) all_bytes += char(b);
  const std::vector<std::string> texts = {
      "", "hello world", "  leading and trailing  ", "tabs\tand\nnewlines\r\n", "it's 12:30, isn't it?!",
      "café 日本語 👍🏽 Ελλάδα привет", "\xff\xfe invalid", "\xe6\x97", "\xc0\xaf overlong", "\xed\xa0\x80 surrogate",
      std::string("nul\0inside", 10), all_bytes, "xy <s> </s> <unk>"};
  for (const std::string& text : texts) {
    CAPTURE(text);
    const Ids ids = t.encode(text);
    CHECK(ids.front() == 0);
    CHECK(ids.back() == 2);
    if (text.find("xy") == std::string::npos) CHECK(t.decode(ids) == text);
  }
  // Random bytes: every id is a byte symbol or a merge, and decode gives the bytes back.
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; trial++) {
    std::string text(size_t(rng() % 40), '\0');
    for (char& c : text) c = char(rng() % 256);
    // No "x" right before "y": that merge has no token.
    if (text.find("xy") != std::string::npos) continue;
    CHECK(t.decode(t.encode(text)) == text);
  }
  // decode leaves out <s>, </s> and padding, keeps <unk>, and rejects ids it does not have.
  CHECK(t.decode({0, 267, 2, 1, 1}) == "hello");
  CHECK(t.decode({3}) == "<unk>");
  CHECK_THROWS_AS(t.decode({282}), st::ArgumentError);
  CHECK_THROWS_AS(t.decode({-1}), st::ArgumentError);
}

// ---------------------------------------------------------------- truncation, padding, batches

TEST_CASE("tokenizer: truncation keeps the end token; padding fills with the pad id") {
  const BpeTokenizer t = bpe();
  // hello Ġworld Ġthe
  CHECK(t.encode("hello world the") == Ids{0, 267, 272, 263, 2});
  CHECK(t.encode("hello world the", 10) == Ids{0, 267, 272, 263, 2});
  CHECK(t.encode("hello world the", 5) == Ids{0, 267, 272, 263, 2});
  CHECK(t.encode("hello world the", 4) == Ids{0, 267, 272, 2});
  CHECK(t.encode("hello world the", 3) == Ids{0, 267, 2});
  CHECK(t.encode("hello world the", 2) == Ids{0, 2});

  const st::data::Encoding e = t.encode_padded("hello", 5);
  CHECK(e.ids == Ids{0, 267, 2, 1, 1});
  CHECK(e.mask == Ids{1, 1, 1, 0, 0});
  const st::data::Encoding cut = t.encode_padded("hello world the", 4);
  CHECK(cut.ids == Ids{0, 267, 272, 2});
  CHECK(cut.mask == Ids{1, 1, 1, 1});

  const WordPieceTokenizer w = bert();
  CHECK(w.encode("the cat sat on the mat", 4) == Ids{2, 5, 6, 3});
  const st::data::Encoding we = w.encode_padded("the cat", 6);
  CHECK(we.ids == Ids{2, 5, 6, 3, 0, 0});  // [PAD] is 0 here
  CHECK(we.mask == Ids{1, 1, 1, 1, 0, 0});

  CHECK_THROWS_AS(t.encode("hello", 1), st::ArgumentError);
  CHECK_THROWS_AS(t.encode("hello", -3), st::ArgumentError);
  CHECK_THROWS_AS(t.encode_padded("hello", 0), st::ArgumentError);
}

TEST_CASE("tokenizer: batches are ids i32 (B, T) and a 0/1 mask (B, T)") {
  const BpeTokenizer t = bpe();
  // Fixed width 4: "hello world" fits, "" is padded, "the the the" (the Ġthe Ġthe) is cut.
  const st::data::Batch b = t.encode_batch({"hello world", "", "the the the"}, 4);
  CHECK(b.ids.dtype() == st::DType::I32);
  CHECK(b.mask.dtype() == st::DType::F32);
  CHECK(b.ids.shape() == st::Shape{3, 4});
  CHECK(b.mask.shape() == st::Shape{3, 4});
  CHECK(b.ids.to_ints() == Ids{0, 267, 272, 2, 0, 2, 1, 1, 0, 264, 263, 2});
  CHECK(b.mask.to_vector() == std::vector<float>{1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1});
  CHECK(b.lengths == std::vector<int>{4, 2, 4});

  // Longest: as wide as the longest row.
  const st::data::Batch l = t.encode_batch({"hello", "hello world the"}, 0, Padding::Longest);
  CHECK(l.ids.shape() == st::Shape{2, 5});
  CHECK(l.ids.to_ints() == Ids{0, 267, 2, 1, 1, 0, 267, 272, 263, 2});
  CHECK(l.mask.to_vector() == std::vector<float>{1, 1, 1, 0, 0, 1, 1, 1, 1, 1});
  // Longest with a limit: cut first, then as wide as the longest cut row.
  CHECK(t.encode_batch({"hello", "hello world the"}, 4, Padding::Longest).ids.shape() == st::Shape{2, 4});

  CHECK_THROWS_AS(t.encode_batch({}, 4), st::ArgumentError);
  CHECK_THROWS_AS(t.encode_batch({"hello"}, 0), st::ArgumentError);  // Fixed needs a width
  CHECK_THROWS_AS(t.encode_batch({"hello"}, 1, Padding::Longest), st::ArgumentError);
}

// ---------------------------------------------------------------- WordPiece

TEST_CASE("tokenizer: WordPiece loads the vocabulary and its special ids") {
  const WordPieceTokenizer w = bert();
  CHECK(w.vocab_size() == 42);
  CHECK(w.special().pad == 0);
  CHECK(w.special().unk == 1);
  CHECK(w.special().begin == 2);
  CHECK(w.special().end == 3);
  CHECK(w.special().mask == 4);
  CHECK(w.token_id("##aff") == 16);
  CHECK(w.token(41) == "елка");
  CHECK_FALSE(w.token(42).has_value());
}

TEST_CASE("tokenizer: WordPiece words, punctuation, digits and greedy longest match") {
  const WordPieceTokenizer w = bert();
  CHECK(w.encode("") == Ids{2, 3});  // just [CLS] [SEP]
  CHECK(w.encode("   \t\n") == Ids{2, 3});
  CHECK(w.encode("The cat sat on the mat.") == Ids{2, 5, 6, 7, 8, 5, 9, 10, 3});
  CHECK(w.encode("Hello, World!") == Ids{2, 18, 11, 19, 12, 3});
  CHECK(w.tokenize("cat's") == Ids{6, 13, 14});      // cat ' s: every punctuation character splits
  CHECK(w.tokenize("unaffable") == Ids{15, 16, 17});  // un ##aff ##able
  CHECK(w.tokenize("cats") == Ids{6, 21});            // cat ##s
  CHECK(w.tokenize("catz") == Ids{1});                // cat, then no ##z: the whole word is [UNK]
  CHECK(w.tokenize("abc") == Ids{29, 30});            // the longest prefix "ab" first, then ##c
  CHECK(w.tokenize("123") == Ids{22, 23, 24});        // 1 ##2 ##3
  CHECK(w.tokenize("$99") == Ids{33, 1});             // "$" splits; "99" cannot start ("9" is only ##9)
  CHECK(w.tokenize("dog") == Ids{1});
  // Unicode punctuation splits too: an em dash (not in the vocabulary), inverted question mark.
  CHECK(w.tokenize("hello\u2014world") == Ids{18, 1, 19});
  CHECK(w.tokenize("\u00bfhello?") == Ids{1, 18, 32});
  CHECK(w.basic_tokenize("Hello, W\u00f6rld!") == std::vector<std::string>{"hello", ",", "world", "!"});
}

TEST_CASE("tokenizer: WordPiece words longer than 100 characters are [UNK]") {
  const WordPieceTokenizer w = bert();
  // 100 characters: ab, then 98 x ##b.
  Ids expected{29};
  expected.insert(expected.end(), 98, 28);
  CHECK(w.tokenize("a" + std::string(99, 'b')) == expected);
  CHECK(w.tokenize("a" + std::string(100, 'b')) == Ids{1});  // 101 characters
}

TEST_CASE("tokenizer: WordPiece uncased lower-cases and strips accents") {
  const WordPieceTokenizer w = bert();
  CHECK(w.tokenize("Caf\u00e9 NA\u00cfVE") == Ids{20, 31});  // café naïve -> cafe naive
  CHECK(w.tokenize("cafe\u0301") == Ids{20});               // e + combining acute: the mark is dropped
  CHECK(w.tokenize("\u00c0\u00c9\u00ce\u00d5\u00dc") == Ids{34});  // ÀÉÎÕÜ -> aeiou
  CHECK(w.tokenize("\u0395\u039b\u039b\u0386\u0394\u0391") == Ids{40});  // ΕΛΛΆΔΑ -> ελλαδα
  CHECK(w.tokenize("\u0401\u043b\u043a\u0430") == Ids{41});  // Ёлка -> елка
  CHECK(w.tokenize("\ud55c") == Ids{38});                    // 한 decomposes into its jamo (NFD)
  CHECK(w.tokenize("\u304c") == Ids{39});                    // が -> か + voicing mark, dropped
  CHECK(w.tokenize("\u30ac") == Ids{1});                     // ガ -> カ, which the vocabulary lacks

  // Python's lower() gives a capital sigma ending a word the final form ς.
  CHECK(w.basic_tokenize("\u039f\u0394\u039f\u03a3 \u03a3\u0391\u03a3. \u03a3") ==
        std::vector<std::string>{"\u03bf\u03b4\u03bf\u03c2", "\u03c3\u03b1\u03c2", ".", "\u03c3"});

  // Cased: nothing changes.
  const WordPieceTokenizer cased = bert(false);
  CHECK(cased.tokenize("The Caf\u00e9 cat") == Ids{35, 36, 6});
  CHECK(cased.tokenize("THE") == Ids{1});
  CHECK(cased.tokenize("\ud55c") == Ids{1});
  CHECK(w.tokenize("The Caf\u00e9") == Ids{5, 20});
}

TEST_CASE("tokenizer: WordPiece CJK, whitespace, control characters and invalid UTF-8") {
  const WordPieceTokenizer w = bert();
  CHECK(w.tokenize("日本") == Ids{25, 26});         // each ideograph is a word
  CHECK(w.tokenize("日本語") == Ids{25, 26, 1});
  CHECK(w.tokenize("the日本cat") == Ids{5, 25, 26, 6});
  CHECK(w.tokenize("  the\t\ncat  ") == Ids{5, 6});
  CHECK(w.tokenize("the\u3000cat\u00a0sat") == Ids{5, 6, 7});  // ideographic and no-break spaces
  CHECK(w.tokenize("ca\u200bt \u00adthe") == Ids{6, 5});       // zero-width space, soft hyphen: dropped
  CHECK(w.tokenize(std::string("the\0cat", 7)) == Ids{1});     // NUL dropped: "thecat" has no ##cat
  CHECK(w.tokenize("the \x01\x7f cat") == Ids{5, 6});
  CHECK(w.tokenize("the \xff\xfe cat") == Ids{5, 6});          // invalid bytes: U+FFFD, dropped
  CHECK(w.tokenize("the \xe6\x97") == Ids{5});
}

TEST_CASE("tokenizer: WordPiece decode joins ## pieces") {
  const WordPieceTokenizer w = bert();
  CHECK(w.decode(w.encode("The cat's unaffable!")) == "the cat ' s unaffable !");
  CHECK(w.decode(w.encode_padded("cats", 6).ids) == "cats");
  CHECK_THROWS_AS(w.decode({42}), st::ArgumentError);
}

// ---------------------------------------------------------------- bad files

TEST_CASE("tokenizer: missing and malformed files are FormatErrors naming the file and line") {
  const std::string vocab = kDir + "bpe_vocab.json", merges = kDir + "bpe_merges.txt";
  std::string msg = format_error([&] { (void)BpeTokenizer(kDir + "missing.json", merges); });
  CHECK(msg.find("missing.json") != std::string::npos);
  msg = format_error([&] { (void)BpeTokenizer(vocab, kDir + "missing.txt"); });
  CHECK(msg.find("missing.txt") != std::string::npos);
  msg = format_error([&] { (void)BpeTokenizer(kDir, merges); });  // a directory
  CHECK(!msg.empty());

  msg = format_error([&] { (void)BpeTokenizer(kDir + "bpe_bad_json.json", merges); });
  CHECK(msg.find("bpe_bad_json.json:3") != std::string::npos);
  msg = format_error([&] { (void)BpeTokenizer(vocab, kDir + "bpe_bad_merges.txt"); });
  CHECK(msg.find("bpe_bad_merges.txt:3") != std::string::npos);
  msg = format_error([&] { (void)BpeTokenizer(kDir + "bpe_bad_id.json", merges); });
  CHECK(msg.find("'</s>'") != std::string::npos);
  msg = format_error([&] { (void)BpeTokenizer(kDir + "bpe_not_object.json", merges); });
  CHECK(msg.find("bpe_not_object.json") != std::string::npos);
  msg = format_error([&] { (void)BpeTokenizer(kDir + "bpe_no_unk.json", merges); });
  CHECK(msg.find("<unk>") != std::string::npos);

  // Every malformed merges line: one field, three, empty halves, two spaces.
  for (const char* line : {"a", "a b c", " a", "a ", "a  b", "\xff b"}) {
    CAPTURE(line);
    const TempFile bad(std::string("#version: 0.2\nh e\n") + line + "\n");
    msg = format_error([&] { (void)BpeTokenizer(vocab, bad.path); });
    CHECK(msg.find(bad.path + ":3") != std::string::npos);
  }
  // Duplicate ids, an id out of range.
  const TempFile dup_id(R"({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 4})", ".json");
  CHECK_THROWS_AS(BpeTokenizer(dup_id.path, merges), st::FormatError);
  const TempFile big_id(R"({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 3000000000})", ".json");
  CHECK_THROWS_AS(BpeTokenizer(big_id.path, merges), st::FormatError);
  // A merges file with only its version line is fine: every piece stays bytes.
  const TempFile no_merges("#version: 0.2\n");
  CHECK(BpeTokenizer(vocab, no_merges.path).tokenize("the") == Ids{byte_id('t'), byte_id('h'), byte_id('e')});

  const std::string wp = kDir + "wordpiece_vocab.txt";
  msg = format_error([&] { (void)WordPieceTokenizer(kDir + "missing.txt"); });
  CHECK(msg.find("missing.txt") != std::string::npos);
  msg = format_error([&] { (void)WordPieceTokenizer(kDir + "wordpiece_dup.txt"); });
  CHECK(msg.find("wordpiece_dup.txt:8") != std::string::npos);  // "the" again (first at line 6)
  msg = format_error([&] { (void)WordPieceTokenizer(kDir + "wordpiece_no_cls.txt"); });
  CHECK(msg.find("[CLS]") != std::string::npos);
  const TempFile empty("");
  CHECK_THROWS_AS(WordPieceTokenizer(empty.path), st::FormatError);
  const TempFile blank_line("[PAD]\n[UNK]\n\n[CLS]\n[SEP]\n[MASK]\n");
  msg = format_error([&] { (void)WordPieceTokenizer(blank_line.path); });
  CHECK(msg.find(blank_line.path + ":3") != std::string::npos);
  // Windows line ends are fine.
  const TempFile crlf("[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\n[MASK]\r\nthe\r\n");
  CHECK(WordPieceTokenizer(crlf.path).encode("the") == Ids{2, 5, 3});
}

TEST_CASE("tokenizer: truncated and random files load or fail with a FormatError, never crash") {
  const std::string vocab = kDir + "bpe_vocab.json", merges = kDir + "bpe_merges.txt",
                    wp = kDir + "wordpiece_vocab.txt";
  int others = 0;  // exceptions that are not FormatError
  const auto attempt = [&](auto load) {
    try {
      load();
    } catch (const st::FormatError&) {
    } catch (...) {
      others++;
    }
  };
  for (const std::string* path : {&vocab, &merges, &wp}) {
    const std::string bytes = read_bytes(*path);
    REQUIRE(!bytes.empty());
    for (size_t cut = 0; cut < bytes.size(); cut += (path == &vocab ? 37 : 3)) {
      const TempFile part(bytes.substr(0, cut));
      if (path == &vocab) attempt([&] { (void)BpeTokenizer(part.path, merges); });
      if (path == &merges) attempt([&] { (void)BpeTokenizer(vocab, part.path).tokenize("hello world"); });
      if (path == &wp) attempt([&] { (void)WordPieceTokenizer(part.path).tokenize("hello world"); });
    }
  }
  std::mt19937 rng(11);
  for (int trial = 0; trial < 50; trial++) {
    std::string noise(size_t(rng() % 200), '\0');
    for (char& c : noise) c = char(rng() % 256);
    const TempFile f(noise);
    attempt([&] { (void)BpeTokenizer(f.path, merges); });
    attempt([&] { (void)BpeTokenizer(vocab, f.path).tokenize("hello world"); });
    attempt([&] { (void)WordPieceTokenizer(f.path); });
  }
  CHECK(others == 0);
}

TEST_CASE("tokenizer: random text never throws") {
  const BpeTokenizer t = bpe();
  const WordPieceTokenizer w = bert();
  std::mt19937 rng(3);
  for (int trial = 0; trial < 300; trial++) {
    std::string text(size_t(rng() % 64), '\0');
    for (char& c : text) c = char(rng() % 256);
    CHECK_NOTHROW(t.encode(text, 16));
    CHECK_NOTHROW(w.encode(text, 16));
  }
}
