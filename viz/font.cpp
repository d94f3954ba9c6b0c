#include "viz/font.h"

#include <algorithm>
#include <iterator>
#include <stdexcept>

namespace st {

namespace {

// The glyphs, drawn for this project: '#' is ink, '.' is paper, rows from
// top to bottom separated by one space. Rows left out at the end are blank.
// The table is in ASCII order from ' ' (32) to '~' (126); the compiler
// parses it into bit rows below and rejects a malformed or misordered entry.
struct GlyphArt {
  char c;
  const char* rows;
};
constexpr GlyphArt kGlyphArt[] = {
    {' ', ""},
    {'!', "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#.."},
    {'"', ".#.#. .#.#. .#.#."},
    {'#', ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#."},
    {'$', "..#.. .#### #.#.. .###. ..#.# ####. ..#.."},
    {'%', "##... ##..# ...#. ..#.. .#... #..## ...##"},
    {'&', ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#"},
    {'\'', "..#.. ..#.. .#..."},
    {'(', "...#. ..#.. .#... .#... .#... ..#.. ...#."},
    {')', ".#... ..#.. ...#. ...#. ...#. ..#.. .#..."},
    {'*', "..... ..#.. #.#.# .###. #.#.# ..#.."},
    {'+', "..... ..#.. ..#.. ##### ..#.. ..#.."},
    {',', "..... ..... ..... ..... ..... .##.. .##.. ..#.. .#..."},
    {'-', "..... ..... ..... #####"},
    {'.', "..... ..... ..... ..... ..... .##.. .##.."},
    {'/', "..... ....# ...#. ..#.. .#... #...."},
    {'0', ".###. #...# #..## #.#.# ##..# #...# .###."},
    {'1', "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###."},
    {'2', ".###. #...# ....# ...#. ..#.. .#... #####"},
    {'3', "##### ...#. ..#.. ...#. ....# #...# .###."},
    {'4', "...#. ..##. .#.#. #..#. ##### ...#. ...#."},
    {'5', "##### #.... ####. ....# ....# #...# .###."},
    {'6', "..##. .#... #.... ####. #...# #...# .###."},
    {'7', "##### ....# ...#. ..#.. .#... .#... .#..."},
    {'8', ".###. #...# #...# .###. #...# #...# .###."},
    {'9', ".###. #...# #...# .#### ....# ...#. .##.."},
    {':', "..... .##.. .##.. ..... ..... .##.. .##.."},
    {';', "..... .##.. .##.. ..... ..... .##.. .##.. ..#.. .#..."},
    {'<', "...#. ..#.. .#... #.... .#... ..#.. ...#."},
    {'=', "..... ..... ##### ..... #####"},
    {'>', ".#... ..#.. ...#. ....# ...#. ..#.. .#..."},
    {'?', ".###. #...# ....# ...#. ..#.. ..... ..#.."},
    {'@', ".###. #...# ....# .##.# #.#.# #.#.# .###."},
    {'A', ".###. #...# #...# ##### #...# #...# #...#"},
    {'B', "####. #...# #...# ####. #...# #...# ####."},
    {'C', ".###. #...# #.... #.... #.... #...# .###."},
    {'D', "###.. #..#. #...# #...# #...# #..#. ###.."},
    {'E', "##### #.... #.... ####. #.... #.... #####"},
    {'F', "##### #.... #.... ####. #.... #.... #...."},
    {'G', ".###. #...# #.... #.### #...# #...# .####"},
    {'H', "#...# #...# #...# ##### #...# #...# #...#"},
    {'I', ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###."},
    {'J', "..### ...#. ...#. ...#. ...#. #..#. .##.."},
    {'K', "#...# #..#. #.#.. ##... #.#.. #..#. #...#"},
    {'L', "#.... #.... #.... #.... #.... #.... #####"},
    {'M', "#...# ##.## #.#.# #.#.# #...# #...# #...#"},
    {'N', "#...# #...# ##..# #.#.# #..## #...# #...#"},
    {'O', ".###. #...# #...# #...# #...# #...# .###."},
    {'P', "####. #...# #...# ####. #.... #.... #...."},
    {'Q', ".###. #...# #...# #...# #.#.# #..#. .##.#"},
    {'R', "####. #...# #...# ####. #.#.. #..#. #...#"},
    {'S', ".#### #.... #.... .###. ....# ....# ####."},
    {'T', "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#.."},
    {'U', "#...# #...# #...# #...# #...# #...# .###."},
    {'V', "#...# #...# #...# #...# #...# .#.#. ..#.."},
    {'W', "#...# #...# #...# #.#.# #.#.# #.#.# .#.#."},
    {'X', "#...# #...# .#.#. ..#.. .#.#. #...# #...#"},
    {'Y', "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#.."},
    {'Z', "##### ....# ...#. ..#.. .#... #.... #####"},
    {'[', ".###. .#... .#... .#... .#... .#... .###."},
    {'\\', "..... #.... .#... ..#.. ...#. ....#"},
    {']', ".###. ...#. ...#. ...#. ...#. ...#. .###."},
    {'^', "..#.. .#.#. #...#"},
    {'_', "..... ..... ..... ..... ..... ..... ..... #####"},
    {'`', ".#... ..#.. ...#."},
    {'a', "..... ..... .###. ....# .#### #...# .####"},
    {'b', "#.... #.... #.##. ##..# #...# #...# ####."},
    {'c', "..... ..... .###. #.... #.... #...# .###."},
    {'d', "....# ....# .##.# #..## #...# #...# .####"},
    {'e', "..... ..... .###. #...# ##### #.... .###."},
    {'f', "..##. .#..# .#... ###.. .#... .#... .#..."},
    {'g', "..... ..... .#### #...# #...# #...# .#### ....# .###."},
    {'h', "#.... #.... #.##. ##..# #...# #...# #...#"},
    {'i', "..#.. ..... .##.. ..#.. ..#.. ..#.. .###."},
    {'j', "...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##.."},
    {'k', "#.... #.... #..#. #.#.. ##... #.#.. #..#."},
    {'l', ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###."},
    {'m', "..... ..... ##.#. #.#.# #.#.# #.#.# #.#.#"},
    {'n', "..... ..... #.##. ##..# #...# #...# #...#"},
    {'o', "..... ..... .###. #...# #...# #...# .###."},
    {'p', "..... ..... ####. #...# #...# #...# ####. #.... #...."},
    {'q', "..... ..... .#### #...# #...# #...# .#### ....# ....#"},
    {'r', "..... ..... #.##. ##..# #.... #.... #...."},
    {'s', "..... ..... .#### #.... .###. ....# ####."},
    {'t', ".#... .#... ###.. .#... .#... .#..# ..##."},
    {'u', "..... ..... #...# #...# #...# #..## .##.#"},
    {'v', "..... ..... #...# #...# #...# .#.#. ..#.."},
    {'w', "..... ..... #...# #...# #.#.# #.#.# .#.#."},
    {'x', "..... ..... #...# .#.#. ..#.. .#.#. #...#"},
    {'y', "..... ..... #...# #...# #...# #...# .#### ....# .###."},
    {'z', "..... ..... ##### ...#. ..#.. .#... #####"},
    {'{', "...#. ..#.. ..#.. .#... ..#.. ..#.. ...#."},
    {'|', "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#.."},
    {'}', ".#... ..#.. ..#.. ...#. ..#.. ..#.. .#..."},
    {'~', "..... ..... .#... #.#.# ...#."},
};
constexpr int kFirstChar = 32, kLastChar = 126;
constexpr int kGlyphCount = kLastChar - kFirstChar + 1;
static_assert(std::size(kGlyphArt) == kGlyphCount, "one glyph per printable ASCII character");

// Art -> bit rows. A throw inside a constant expression is a compile error,
// so a typo in the table above cannot reach a figure.
constexpr GlyphRows parse_glyph(const char* art) {
  GlyphRows rows{};
  int row = 0, col = 0;
  for (const char* p = art; *p; ++p) {
    if (*p == ' ') {
      if (col != 0 && col != kGlyphWidth) throw std::logic_error("glyph row of the wrong width");
      if (col == kGlyphWidth) ++row, col = 0;
      continue;
    }
    if ((*p != '#' && *p != '.') || col >= kGlyphWidth || row >= kGlyphHeight)
      throw std::logic_error("malformed glyph art");
    if (*p == '#') rows[size_t(row)] = uint8_t(rows[size_t(row)] | (1u << (kGlyphWidth - 1 - col)));
    ++col;
  }
  if (col != 0 && col != kGlyphWidth) throw std::logic_error("glyph row of the wrong width");
  return rows;
}

constexpr std::array<GlyphRows, kGlyphCount> parse_font() {
  std::array<GlyphRows, kGlyphCount> font{};
  for (int i = 0; i < kGlyphCount; ++i) {
    if (kGlyphArt[i].c != char(kFirstChar + i)) throw std::logic_error("glyph table out of ASCII order");
    font[size_t(i)] = parse_glyph(kGlyphArt[i].rows);
  }
  return font;
}
constexpr std::array<GlyphRows, kGlyphCount> kFont = parse_font();

constexpr int kStrikeRow = 4;  // the middle of the lower-case x-height (rows 2..6)

}  // namespace

const GlyphRows& glyph_rows(char c) {
  const int code = static_cast<unsigned char>(c);
  if (code < kFirstChar || code > kLastChar) return kFont['?' - kFirstChar];
  return kFont[size_t(code - kFirstChar)];
}

bool glyph_pixel(char c, int col, int row) {
  if (col < 0 || col >= kGlyphWidth || row < 0 || row >= kGlyphHeight) return false;
  return (glyph_rows(c)[size_t(row)] >> (kGlyphWidth - 1 - col)) & 1u;
}

int text_width(std::string_view text, int scale) { return int(text.size()) * kGlyphAdvance * scale; }

void draw_text(Image& image, int x, int y, std::string_view text, const TextStyle& style) {
  const int s = style.scale;
  for (size_t i = 0; i < text.size(); ++i) {
    const int left = x + int(i) * kGlyphAdvance * s;
    for (int row = 0; row < kGlyphHeight; ++row)
      for (int col = 0; col < kGlyphWidth; ++col)
        if (glyph_pixel(text[i], col, row)) fill_rect(image, left + col * s, y + row * s, s, s, style.color);
  }
  // One unbroken line across the whole text (spacing columns included) reads
  // as "struck out" better than a dash under each glyph.
  if (style.strikethrough && !text.empty())
    fill_rect(image, x, y + kStrikeRow * s, text_width(text, s) - s, s, style.color);
}

std::string printable_token(std::string_view token) {
  std::string out;
  for (size_t i = 0; i < token.size();) {
    const unsigned char b = static_cast<unsigned char>(token[i]);
    if (b < 0x80) {
      out += (b >= kFirstChar && b <= kLastChar) ? char(b) : '?';
      ++i;
      continue;
    }
    // The length of this UTF-8 sequence from its lead byte (a stray
    // continuation byte counts as a sequence of one).
    size_t len = (b >= 0xF0) ? 4 : (b >= 0xE0) ? 3 : (b >= 0xC0) ? 2 : 1;
    len = std::min(len, token.size() - i);
    const bool word_start_marker = len == 2 && b == 0xC4 && static_cast<unsigned char>(token[i + 1]) == 0xA0;
    if (!word_start_marker) out += '?';
    i += len;
  }
  return out;
}

}  // namespace st
