// Text tokenizers: byte-level BPE (RoBERTa and GPT-2 files: vocab.json +
// merges.txt), which METER's text encoder (roberta-base) reads, and
// WordPiece (BERT files: vocab.txt), which BLIP's reads. What both share
// lives in Tokenizer: the special token that opens and closes every
// sequence, truncation that keeps the closing token, padding with its
// attention mask, and batches shaped for Meter::forward.
//
//   BpeTokenizer roberta("vocab.json", "merges.txt");
//   roberta.encode("a cat")                -> ids of <s> a Ġcat </s>
//   Batch b = roberta.encode_batch(texts, 40);   // ids i32 (B, 40), mask (B, 40)
//
// Unicode is handled with compact tables (in tokenizer.cpp), not the whole
// Unicode database. ASCII is exact; beyond it the tables cover the common
// scripts (Latin with its extensions, Greek, Cyrillic, Armenian, Hebrew,
// Arabic, Devanagari, Thai, Georgian, Hangul, kana and CJK) and their common
// punctuation, digits, spaces, controls and combining marks. A code point
// they miss counts as "other" (a symbol) and is never lower-cased or
// stripped of accents. Known gaps against Python's unicodedata, which the
// reference tokenizers use: letters of other scripts (Bengali, Tamil,
// Syriac, ...) are symbols; polytonic Greek (U+1F00..1FFF) keeps its case
// and accents; CJK compatibility ideographs are not mapped to the unified
// ones NFD gives; the final-sigma rule of Python's lower() uses an
// approximate set of cased and case-ignorable characters; WordPiece does
// not first NFC-compose the text, as newer BertTokenizers do (it matters
// only for cased vocabularies and decomposed input). Special tokens written
// inside the text ("<mask>", "[SEP]") are ordinary text, not special tokens.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/tensor.h"

namespace st::data {

struct SpecialIds {
  int32_t begin = 0;  // <s> / [CLS]: first token of every sequence
  int32_t end = 0;    // </s> / [SEP]: last real token; truncation keeps it
  int32_t pad = 0;    // <pad> / [PAD]: fills rows up to the padded length
  int32_t unk = 0;    // <unk> / [UNK]: what the vocabulary cannot spell
  int32_t mask = 0;   // <mask> / [MASK]: for masked language modelling
};

// Token names as the vocabulary file spells them; loading fails without them.
struct SpecialNames {
  std::string begin, end, pad, unk, mask;
  static SpecialNames roberta() { return {"<s>", "</s>", "<pad>", "<unk>", "<mask>"}; }
  static SpecialNames bert() { return {"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"}; }
};

struct Encoding {
  std::vector<int32_t> ids;   // (T)
  std::vector<int32_t> mask;  // (T): 1 on real tokens, 0 on padding
};

// Fixed: every batch is max_length wide. Longest: as wide as its longest row
// (after truncation to max_length, when max_length > 0).
enum class Padding { Fixed, Longest };

struct Batch {
  Tensor ids;                // i32 (B, T)
  Tensor mask;               // f32 (B, T): 1 on real tokens, 0 on padding
  std::vector<int> lengths;  // real tokens in each row, specials included
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // The ids of text without special tokens. Never throws on any bytes.
  virtual std::vector<int32_t> tokenize(const std::string& text) const = 0;
  // Back to text; begin, end and padding tokens are left out. An id the
  // vocabulary does not have is an ArgumentError.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // The vocabulary as spelled in its file; nullopt when it has no such token / id.
  virtual std::optional<int32_t> token_id(const std::string& token) const = 0;
  virtual std::optional<std::string> token(int32_t id) const = 0;
  virtual int64_t vocab_size() const = 0;  // the largest id + 1

  const SpecialIds& special() const { return special_; }

  // begin, tokenize(text), end. max_length > 0 cuts the text's tokens so the
  // whole is at most max_length long; it must then be at least 2.
  std::vector<int32_t> encode(const std::string& text, int max_length = 0) const;
  // encode(text, length), then padded to exactly length (at least 2).
  Encoding encode_padded(const std::string& text, int length) const;
  // One row per text (at least one), padded as padding says.
  Batch encode_batch(const std::vector<std::string>& texts, int max_length,
                     Padding padding = Padding::Fixed) const;

 protected:
  SpecialIds special_;
};

// Byte-level BPE as GPT-2 defined it and RoBERTa kept it: the text is cut
// into pieces by GPT-2's pre-tokenization pattern, each piece's bytes are
// written in GPT-2's 256-character alphabet (a space is "Ġ"), merges join
// adjacent symbols lowest rank first, and each final symbol is looked up
// (<unk> when the vocabulary lacks it). Any bytes encode, invalid UTF-8
// included, and decode(tokenize(x)) == x whenever every symbol BPE makes is
// in the vocabulary (true of the real files, which hold all 256 byte symbols
// and every merge's result). No space is added before the text (RoBERTa's
// add_prefix_space = false).
class BpeTokenizer : public Tokenizer {
 public:
  // vocab.json: {"token": id, ...}. merges.txt: one "a b" per line in rank
  // order, after an optional "#version" first line. Malformed files are a
  // FormatError naming the file (and the line, where there is one).
  BpeTokenizer(const std::string& vocab_json, const std::string& merges_txt,
               const SpecialNames& names = SpecialNames::roberta());
  ~BpeTokenizer() override;
  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;

  std::vector<int32_t> tokenize(const std::string& text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::optional<int32_t> token_id(const std::string& token) const override;
  std::optional<std::string> token(int32_t id) const override;
  int64_t vocab_size() const override { return vocab_size_; }

  // GPT-2's pre-tokenization: the pieces of text (byte strings that
  // concatenate back to text), each encoded on its own.
  static std::vector<std::string> pre_tokenize(const std::string& text);
  // One piece's final symbols, in the byte alphabet ("Ġworld").
  std::vector<std::string> bpe(const std::string& piece) const;

 private:
  struct Cache;  // piece -> ids; guarded, so tokenize() may run on several threads
  std::unordered_map<std::string, int32_t> ids_;
  std::unordered_map<int32_t, std::string> tokens_;
  std::unordered_map<std::string, int> ranks_;  // "a b" -> rank
  int64_t vocab_size_ = 0;
  std::unique_ptr<Cache> cache_;
};

// BERT's tokenizer: its basic tokenizer (drop control characters, split on
// whitespace, put spaces around CJK ideographs, optionally lower-case and
// strip accents, split off every punctuation character), then greedy
// longest-match-first WordPiece with "##" marking a word's continuation.
// A word longer than 100 characters, or one WordPiece cannot spell, is one
// [UNK]. Invalid UTF-8 bytes become U+FFFD, which BERT drops.
class WordPieceTokenizer : public Tokenizer {
 public:
  // vocab.txt: one token per line, id = line index (from 0). uncased: what
  // bert-base-uncased does, lower-casing and stripping accents.
  explicit WordPieceTokenizer(const std::string& vocab_txt, bool uncased = true,
                              const SpecialNames& names = SpecialNames::bert());

  std::vector<int32_t> tokenize(const std::string& text) const override;
  // Tokens joined by spaces, "##" pieces glued to the one before.
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::optional<int32_t> token_id(const std::string& token) const override;
  std::optional<std::string> token(int32_t id) const override;
  int64_t vocab_size() const override { return int64_t(tokens_.size()); }

  // The basic tokenizer's words, before WordPiece.
  std::vector<std::string> basic_tokenize(const std::string& text) const;
  // WordPiece of one basic word: its pieces' ids, or {[UNK]}.
  std::vector<int32_t> word_piece(const std::string& word) const;

  static constexpr int kMaxWordChars = 100;

 private:
  bool uncased_;
  std::unordered_map<std::string, int32_t> ids_;
  std::vector<std::string> tokens_;
};

}  // namespace st::data
