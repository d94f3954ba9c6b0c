#include "data/tokenizer.h"

#include <algorithm>
#include <array>
#include <climits>
#include <filesystem>
#include <functional>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <span>
#include <sstream>
#include <string_view>

#include "engine/error.h"

namespace st::data {

namespace {

// ---------------------------------------------------------------- UTF-8

constexpr char32_t kInvalid = 0xFFFFFFFF;      // what decode_utf8 returns for a bad byte
constexpr char32_t kReplacement = 0xFFFD;

// The code point starting at s[i], its byte length in len. A bad lead byte,
// a missing or bad continuation byte, an overlong form, a surrogate or a
// value past U+10FFFF gives kInvalid with len 1, so callers always advance.
char32_t decode_utf8(std::string_view s, size_t i, size_t& len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  len = 1;
  if (c < 0x80) return c;
  size_t more;
  char32_t cp, least;
  if ((c & 0xE0) == 0xC0) { more = 1; cp = c & 0x1F; least = 0x80; }
  else if ((c & 0xF0) == 0xE0) { more = 2; cp = c & 0x0F; least = 0x800; }
  else if ((c & 0xF8) == 0xF0) { more = 3; cp = c & 0x07; least = 0x10000; }
  else return kInvalid;
  for (size_t k = 1; k <= more; k++) {
    if (i + k >= s.size()) return kInvalid;
    const unsigned char b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return kInvalid;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < least || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalid;
  len = more + 1;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

// Code points of text; invalid bytes become U+FFFD, one per byte.
std::u32string decode_all(std::string_view text) {
  std::u32string out;
  for (size_t i = 0, len; i < text.size(); i += len) {
    const char32_t cp = decode_utf8(text, i, len);
    out += cp == kInvalid ? kReplacement : cp;
  }
  return out;
}

bool valid_utf8(std::string_view text) {
  for (size_t i = 0, len; i < text.size(); i += len)
    if (decode_utf8(text, i, len) == kInvalid) return false;
  return true;
}

// ---------------------------------------------------------------- Unicode tables
//
// Compact stand-ins for the Unicode categories the two tokenizers ask about,
// for code points >= 0x80 (ASCII is decided exactly in the functions below).
// They list the common scripts' ranges; what they leave out counts as
// "other". Each table is sorted, which a static_assert checks.

struct Range {
  char32_t lo, hi;
};

constexpr bool sorted_pairs(std::span<const std::pair<char32_t, char32_t>> t) {
  for (size_t i = 1; i < t.size(); i++)
    if (t[i - 1].first >= t[i].first) return false;
  return true;
}

constexpr bool sorted(std::span<const Range> t) {
  for (size_t i = 0; i < t.size(); i++)
    if (t[i].lo > t[i].hi || (i > 0 && t[i - 1].hi >= t[i].lo)) return false;
  return true;
}

bool in_table(std::span<const Range> t, char32_t cp) {
  auto it = std::upper_bound(t.begin(), t.end(), cp, [](char32_t c, const Range& r) { return c < r.lo; });
  return it != t.begin() && cp <= (it - 1)->hi;
}

// \p{L}: letters of Latin-1, Latin Extended A/B, IPA, modifier letters,
// Greek (with Greek Extended), Cyrillic, Armenian, Hebrew, Arabic, Devanagari,
// Thai, Georgian, letterlike symbols, Hangul, kana, Bopomofo, CJK ideographs,
// Yi, fullwidth Latin, halfwidth kana and Hangul.
constexpr Range kLetters[] = {
    {0x00AA, 0x00AA},   {0x00B5, 0x00B5},   {0x00BA, 0x00BA},   {0x00C0, 0x00D6},   {0x00D8, 0x00F6},
    {0x00F8, 0x02C1},   {0x02C6, 0x02D1},   {0x02E0, 0x02E4},   {0x02EC, 0x02EC},   {0x02EE, 0x02EE},
    {0x0370, 0x0374},   {0x0376, 0x0377},   {0x037A, 0x037D},   {0x037F, 0x037F},   {0x0386, 0x0386},
    {0x0388, 0x038A},   {0x038C, 0x038C},   {0x038E, 0x03A1},   {0x03A3, 0x03F5},   {0x03F7, 0x0481},
    {0x048A, 0x052F},   {0x0531, 0x0556},   {0x0559, 0x0559},   {0x0560, 0x0588},   {0x05D0, 0x05EA},
    {0x05EF, 0x05F2},   {0x0620, 0x064A},   {0x066E, 0x066F},   {0x0671, 0x06D3},   {0x06D5, 0x06D5},
    {0x06E5, 0x06E6},   {0x06EE, 0x06EF},   {0x06FA, 0x06FC},   {0x06FF, 0x06FF},   {0x0904, 0x0939},
    {0x093D, 0x093D},   {0x0950, 0x0950},   {0x0958, 0x0961},   {0x0971, 0x097F},   {0x0E01, 0x0E30},
    {0x0E32, 0x0E33},   {0x0E40, 0x0E46},   {0x10A0, 0x10C5},   {0x10C7, 0x10C7},   {0x10CD, 0x10CD},
    {0x10D0, 0x10FA},   {0x10FC, 0x10FF},   {0x1100, 0x11FF},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},
    {0x1F20, 0x1F45},   {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},   {0x1FBE, 0x1FBE},
    {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},   {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},
    {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},   {0x2071, 0x2071},   {0x207F, 0x207F},   {0x2090, 0x209C},
    {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},   {0x2115, 0x2115},   {0x2119, 0x211D},
    {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},   {0x212A, 0x212D},   {0x212F, 0x2139},
    {0x213C, 0x213F},   {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2D00, 0x2D25},
    {0x2D27, 0x2D27},   {0x2D2D, 0x2D2D},   {0x3005, 0x3006},   {0x3031, 0x3035},   {0x303B, 0x303C},
    {0x3041, 0x3096},   {0x309D, 0x309F},   {0x30A1, 0x30FA},   {0x30FC, 0x30FF},   {0x3105, 0x312F},
    {0x3131, 0x318E},   {0x31A0, 0x31BF},   {0x31F0, 0x31FF},   {0x3400, 0x4DBF},   {0x4E00, 0x9FFF},
    {0xA000, 0xA48C},   {0xAC00, 0xD7A3},   {0xF900, 0xFA6D},   {0xFA70, 0xFAD9},   {0xFB00, 0xFB06},
    {0xFF21, 0xFF3A},   {0xFF41, 0xFF5A},   {0xFF66, 0xFFBE},   {0xFFC2, 0xFFC7},   {0xFFCA, 0xFFCF},
    {0xFFD2, 0xFFD7},   {0xFFDA, 0xFFDC},   {0x20000, 0x2A6DF}, {0x2A700, 0x2EBE0}, {0x2F800, 0x2FA1D},
    {0x30000, 0x3134A},
};

// \p{N}: superscript and fraction digits, Arabic-Indic, Devanagari, Bengali
// and Thai digits, Roman numerals, circled and parenthesised numbers,
// ideographic numbers, fullwidth digits.
constexpr Range kNumbers[] = {
    {0x00B2, 0x00B3},   {0x00B9, 0x00B9},   {0x00BC, 0x00BE},   {0x0660, 0x0669},   {0x06F0, 0x06F9},
    {0x0966, 0x096F},   {0x09E6, 0x09EF},   {0x0E50, 0x0E59},   {0x2070, 0x2070},   {0x2074, 0x2079},
    {0x2080, 0x2089},   {0x2150, 0x2182},   {0x2185, 0x2189},   {0x2460, 0x249B},   {0x24EA, 0x24FF},
    {0x2776, 0x2793},   {0x3007, 0x3007},   {0x3021, 0x3029},   {0x3038, 0x303A},   {0x3192, 0x3195},
    {0x3220, 0x3229},   {0x3248, 0x324F},   {0x3251, 0x325F},   {0x3280, 0x3289},   {0x32B1, 0x32BF},
    {0xFF10, 0xFF19},   {0x1F100, 0x1F10C},
};

// \s beyond ASCII: Unicode's White_Space property (this one is complete).
constexpr Range kSpaces[] = {
    {0x0085, 0x0085}, {0x00A0, 0x00A0}, {0x1680, 0x1680}, {0x2000, 0x200A}, {0x2028, 0x2029},
    {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000},
};

// P* (punctuation): Latin-1, Greek, Armenian, Hebrew, Arabic, Devanagari,
// Thai, General Punctuation, brackets, CJK and fullwidth forms.
constexpr Range kPunctuation[] = {
    {0x00A1, 0x00A1}, {0x00A7, 0x00A7}, {0x00AB, 0x00AB}, {0x00B6, 0x00B7}, {0x00BB, 0x00BB},
    {0x00BF, 0x00BF}, {0x037E, 0x037E}, {0x0387, 0x0387}, {0x055A, 0x055F}, {0x0589, 0x058A},
    {0x05BE, 0x05BE}, {0x05C0, 0x05C0}, {0x05C3, 0x05C3}, {0x05C6, 0x05C6}, {0x05F3, 0x05F4},
    {0x0609, 0x060A}, {0x060C, 0x060D}, {0x061B, 0x061B}, {0x061D, 0x061F}, {0x066A, 0x066D},
    {0x06D4, 0x06D4}, {0x0964, 0x0965}, {0x0970, 0x0970}, {0x0E4F, 0x0E4F}, {0x0E5A, 0x0E5B},
    {0x10FB, 0x10FB}, {0x2010, 0x2027}, {0x2030, 0x2043}, {0x2045, 0x2051}, {0x2053, 0x205E},
    {0x207D, 0x207E}, {0x208D, 0x208E}, {0x2308, 0x230B}, {0x2329, 0x232A}, {0x2768, 0x2775},
    {0x27C5, 0x27C6}, {0x27E6, 0x27EF}, {0x2983, 0x2998}, {0x29D8, 0x29DB}, {0x29FC, 0x29FD},
    {0x2CF9, 0x2CFC}, {0x2CFE, 0x2CFF}, {0x2E00, 0x2E2E}, {0x2E30, 0x2E4F}, {0x3001, 0x3003},
    {0x3008, 0x3011}, {0x3014, 0x301F}, {0x3030, 0x3030}, {0x303D, 0x303D}, {0x30A0, 0x30A0},
    {0x30FB, 0x30FB}, {0xFE10, 0xFE19}, {0xFE30, 0xFE52}, {0xFE54, 0xFE61}, {0xFE63, 0xFE63},
    {0xFE68, 0xFE68}, {0xFE6A, 0xFE6B}, {0xFF01, 0xFF03}, {0xFF05, 0xFF0A}, {0xFF0C, 0xFF0F},
    {0xFF1A, 0xFF1B}, {0xFF1F, 0xFF20}, {0xFF3B, 0xFF3D}, {0xFF3F, 0xFF3F}, {0xFF5B, 0xFF5B},
    {0xFF5D, 0xFF5D}, {0xFF5F, 0xFF65},
};

// C* that BERT drops: the C1 controls, the common format characters (soft
// hyphen, zero-width and bidi marks, byte order mark, tags) and private use.
// Unassigned code points (Cn) are not listed: they are kept.
constexpr Range kControls[] = {
    {0x007F, 0x009F},    {0x00AD, 0x00AD},    {0x0600, 0x0605},    {0x061C, 0x061C},    {0x06DD, 0x06DD},
    {0x070F, 0x070F},    {0x180E, 0x180E},    {0x200B, 0x200F},    {0x202A, 0x202E},    {0x2060, 0x2064},
    {0x2066, 0x206F},    {0xE000, 0xF8FF},    {0xFEFF, 0xFEFF},    {0xFFF9, 0xFFFB},    {0xE0001, 0xE0001},
    {0xE0020, 0xE007F},  {0xF0000, 0x10FFFF},
};

// BERT's "Chinese characters": the CJK ideograph blocks, exactly as BERT lists them.
constexpr Range kCjk[] = {
    {0x3400, 0x4DBF},   {0x4E00, 0x9FFF},   {0xF900, 0xFAFF},   {0x20000, 0x2A6DF}, {0x2A700, 0x2B73F},
    {0x2B740, 0x2B81F}, {0x2B820, 0x2CEAF}, {0x2F800, 0x2FA1F},
};

// Mn (non-spacing marks), which accent stripping drops: the combining
// diacritics and their extensions, and the common marks of Cyrillic, Hebrew,
// Arabic, Devanagari, Thai and kana; variation selectors.
constexpr Range kMarks[] = {
    {0x0300, 0x036F},   {0x0483, 0x0487},   {0x0591, 0x05BD},   {0x05BF, 0x05BF},   {0x05C1, 0x05C2},
    {0x05C4, 0x05C5},   {0x05C7, 0x05C7},   {0x0610, 0x061A},   {0x064B, 0x065F},   {0x0670, 0x0670},
    {0x06D6, 0x06DC},   {0x06DF, 0x06E4},   {0x06E7, 0x06E8},   {0x06EA, 0x06ED},   {0x0900, 0x0902},
    {0x093A, 0x093A},   {0x093C, 0x093C},   {0x0941, 0x0948},   {0x094D, 0x094D},   {0x0951, 0x0957},
    {0x0962, 0x0963},   {0x0E31, 0x0E31},   {0x0E34, 0x0E3A},   {0x0E47, 0x0E4E},   {0x1AB0, 0x1ABD},
    {0x1ABF, 0x1ACE},   {0x1DC0, 0x1DFF},   {0x20D0, 0x20DC},   {0x20E1, 0x20E1},   {0x20E5, 0x20F0},
    {0x302A, 0x302D},   {0x3099, 0x309A},   {0xFE00, 0xFE0F},   {0xFE20, 0xFE2F},   {0xE0100, 0xE01EF},
};

static_assert(sorted(kLetters) && sorted(kNumbers) && sorted(kSpaces) && sorted(kPunctuation) &&
              sorted(kControls) && sorted(kCjk) && sorted(kMarks));

bool is_ascii_letter(char32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_ascii_digit(char32_t c) { return c >= '0' && c <= '9'; }

bool is_letter(char32_t c) { return c < 0x80 ? is_ascii_letter(c) : in_table(kLetters, c); }
bool is_number(char32_t c) { return c < 0x80 ? is_ascii_digit(c) : in_table(kNumbers, c); }
bool is_space(char32_t c) {  // \s: White_Space
  return c < 0x80 ? (c == ' ' || (c >= '\t' && c <= '\r')) : in_table(kSpaces, c);
}

// BERT: whitespace is space, \t, \n, \r and Zs; every other C0/C1 or format
// character is a control, dropped. (U+2028/2029 are Zl/Zp, which BERT keeps
// and Python's split() then splits on: whitespace here.)
bool is_bert_space(char32_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || (c >= 0x80 && c != 0x85 && in_table(kSpaces, c));
}
bool is_bert_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  return c < 0x20 || in_table(kControls, c);
}
bool is_bert_punctuation(char32_t c) {
  // BERT counts every non-alphanumeric printable ASCII character ("$", "^", "`") as punctuation.
  if (c < 0x80) return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
  return in_table(kPunctuation, c);
}

// ---------------------------------------------------------------- lower case, accents

// Upper -> lower pairs that follow no pattern: Latin Extended-B, archaic
// Greek, Georgian, letterlike symbols (Ohm, Kelvin, Angstrom).
constexpr std::pair<char32_t, char32_t> kLowerPairs[] = {
    {0x0181, 0x0253}, {0x0182, 0x0183}, {0x0184, 0x0185}, {0x0186, 0x0254}, {0x0187, 0x0188},
    {0x0189, 0x0256}, {0x018A, 0x0257}, {0x018B, 0x018C}, {0x018E, 0x01DD}, {0x018F, 0x0259},
    {0x0190, 0x025B}, {0x0191, 0x0192}, {0x0193, 0x0260}, {0x0194, 0x0263}, {0x0196, 0x0269},
    {0x0197, 0x0268}, {0x0198, 0x0199}, {0x019C, 0x026F}, {0x019D, 0x0272}, {0x019F, 0x0275},
    {0x01A0, 0x01A1}, {0x01A2, 0x01A3}, {0x01A4, 0x01A5}, {0x01A6, 0x0280}, {0x01A7, 0x01A8},
    {0x01A9, 0x0283}, {0x01AC, 0x01AD}, {0x01AE, 0x0288}, {0x01AF, 0x01B0}, {0x01B1, 0x028A},
    {0x01B2, 0x028B}, {0x01B3, 0x01B4}, {0x01B5, 0x01B6}, {0x01B7, 0x0292}, {0x01B8, 0x01B9},
    {0x01BC, 0x01BD}, {0x01C4, 0x01C6}, {0x01C5, 0x01C6}, {0x01C7, 0x01C9}, {0x01C8, 0x01C9},
    {0x01CA, 0x01CC}, {0x01CB, 0x01CC}, {0x01F1, 0x01F3}, {0x01F2, 0x01F3}, {0x01F4, 0x01F5},
    {0x01F6, 0x0195}, {0x01F7, 0x01BF}, {0x0220, 0x019E}, {0x023A, 0x2C65}, {0x023B, 0x023C},
    {0x023D, 0x019A}, {0x023E, 0x2C66}, {0x0241, 0x0242}, {0x0243, 0x0180}, {0x0244, 0x0289},
    {0x0245, 0x028C}, {0x0370, 0x0371}, {0x0372, 0x0373}, {0x0376, 0x0377}, {0x037F, 0x03F3},
    {0x03CF, 0x03D7}, {0x03F4, 0x03B8}, {0x03F7, 0x03F8}, {0x03F9, 0x03F2}, {0x03FA, 0x03FB},
    {0x03FD, 0x037B}, {0x03FE, 0x037C}, {0x03FF, 0x037D}, {0x10C7, 0x2D27}, {0x10CD, 0x2D2D},
    {0x2126, 0x03C9}, {0x212A, 0x006B}, {0x212B, 0x00E5}, {0x2132, 0x214E}, {0x2183, 0x2184},
};
static_assert(sorted_pairs(kLowerPairs));

char32_t lookup_pair(std::span<const std::pair<char32_t, char32_t>> table, char32_t c) {
  auto it = std::lower_bound(table.begin(), table.end(), c,
                             [](const std::pair<char32_t, char32_t>& p, char32_t x) { return p.first < x; });
  return it != table.end() && it->first == c ? it->second : c;
}

// Simple lower-case mappings of Latin (Latin-1, Extended-A and -B, Extended
// Additional), Greek (not Greek Extended), Cyrillic, Armenian, Georgian,
// Roman numerals, circled and fullwidth letters. Others stay. U+0130 (İ)
// maps to "i": Python gives "i" + U+0307, whose mark accent stripping drops.
char32_t to_lower(char32_t c) {
  const auto even_upper = [&](char32_t lo, char32_t hi) { return c >= lo && c <= hi && (c - lo) % 2 == 0; };
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if (c == 0x130) return 'i';
  if (c == 0x178) return 0xFF;
  if (c == 0x1E9E) return 0xDF;
  if (c == 0x386) return 0x3AC;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x4C0) return 0x4CF;
  if (even_upper(0x100, 0x12F) || even_upper(0x132, 0x137) || even_upper(0x139, 0x148) ||
      even_upper(0x14A, 0x177) || even_upper(0x179, 0x17E) || even_upper(0x1CD, 0x1DC) ||
      even_upper(0x1DE, 0x1EF) || even_upper(0x1F8, 0x21F) || even_upper(0x222, 0x233) ||
      even_upper(0x460, 0x481) || even_upper(0x48A, 0x4BF) || even_upper(0x4C1, 0x4CE) ||
      even_upper(0x246, 0x24F) || even_upper(0x3D8, 0x3EF) || even_upper(0x4D0, 0x52F) ||
      even_upper(0x1E00, 0x1E95) || even_upper(0x1EA0, 0x1EFF))
    return c + 1;
  if (c >= 0x388 && c <= 0x38A) return c + 37;
  if (c >= 0x38E && c <= 0x38F) return c + 63;
  if ((c >= 0x391 && c <= 0x3A1) || (c >= 0x3A3 && c <= 0x3AB)) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x531 && c <= 0x556) return c + 48;
  if (c >= 0x10A0 && c <= 0x10C5) return c + 0x1C60;
  if (c >= 0x2160 && c <= 0x216F) return c + 16;
  if (c >= 0x24B6 && c <= 0x24CF) return c + 26;
  if (c >= 0xFF21 && c <= 0xFF3A) return c + 32;
  return lookup_pair(kLowerPairs, c);
}

// Python's str.lower(), which BERT calls on each word, writes a capital sigma
// as final sigma (ς) when a cased letter comes before it and none after it,
// skipping case-ignorable characters both ways. Cased letters are taken to be
// the letters of the cased scripts (Latin with IPA and its ligatures, Greek,
// Cyrillic, Armenian, Georgian, fullwidth Latin); case-ignorables the marks,
// apostrophes, periods, colons and the common modifier symbols.
bool is_cased(char32_t c) {
  return is_letter(c) && (c < 0x2B9 || c == 0x2C0 || c == 0x2C1 || (c >= 0x2E0 && c <= 0x2E4) ||
                          (c >= 0x370 && c <= 0x587) || (c >= 0x10A0 && c <= 0x10FF) ||
                          (c >= 0x1E00 && c <= 0x1FFF) || (c >= 0xFB00 && c <= 0xFB06) ||
                          (c >= 0xFF21 && c <= 0xFF5A));
}
bool is_case_ignorable(char32_t c) {
  switch (c) {
    case '\'': case '.': case ':': case '^': case '`': case 0xA8: case 0xAD: case 0xAF: case 0xB4:
    case 0xB7: case 0xB8: case 0x387: case 0x2018: case 0x2019: case 0x2024: case 0x2027:
      return true;
    default:
      return in_table(kMarks, c);
  }
}

std::u32string lower_word(const std::u32string& word) {
  std::u32string out(word.size(), 0);
  for (size_t i = 0; i < word.size(); i++) {
    out[i] = to_lower(word[i]);
    if (word[i] != 0x3A3) continue;
    size_t before = i, after = i + 1;
    while (before > 0 && is_case_ignorable(word[before - 1])) before--;
    while (after < word.size() && is_case_ignorable(word[after])) after++;
    if (before > 0 && is_cased(word[before - 1]) && (after == word.size() || !is_cased(word[after]))) out[i] = 0x3C2;
  }
  return out;
}

// The letter under an accented one: what NFD decomposition leaves once its
// combining marks are dropped. Runs of consecutive code points as strings,
// one base letter per code point, '.' where NFD does not decompose it
// (Æ, Ø, ß, Đ, Ł, ...); non-ASCII bases in kOtherBases.
struct BaseRun {
  char32_t first;
  std::string_view bases;
};
constexpr BaseRun kBaseRuns[] = {
    {0x00C0,
     "AAAAAA.CEEEEIIII"  // C0: À..Ï
     ".NOOOOO..UUUUY.."  // D0: Ð..ß
     "aaaaaa.ceeeeiiii"  // E0: à..ï
     ".nooooo..uuuuy.y"  // F0: ð..ÿ
     "AaAaAaCcCcCcCcDd"  // 100: Ā..ď
     "..EeEeEeEeEeGgGg"  // 110: Đ..ğ
     "GgGgHh..IiIiIiIi"  // 120: Ġ..į
     "I...JjKk.LlLlLl."  // 130: İ..Ŀ
     "...NnNnNn...OoOo"  // 140: ŀ..ŏ
     "Oo..RrRrRrSsSsSs"  // 150: Ő..ş
     "SsTtTt..UuUuUuUu"  // 160: Š..ů
     "UuUuWwYyYZzZzZz."},  // 170: Ű..ſ
    {0x01A0, "Oo"},
    {0x01AF, "Uu"},
    {0x01CD,
     "AaIiOoUuUuUuUuUu"  // 1CD: Ǎ..ǜ
     ".AaAa....GgKkOoO"  // 1DD: ǝ..Ǭ
     "o..j...Gg..NnAa."  // 1ED: ǭ..Ǽ
     "...AaAaEeEeIiIiO"  // 1FD: ǽ..Ȍ
     "oOoRrRrUuUuSsTt."  // 20D: ȍ..Ȝ
     ".Hh......AaEeOoO"  // 21D: ȝ..Ȭ
     "oOoOoYy"},         // 22D: ȭ..ȳ
    {0x1E00,
     "AaBbBbBbCcDdDdDd"  // 1E00: Ḁ..ḏ
     "DdDdEeEeEeEeEeFf"  // 1E10
     "GgHhHhHhHhHhIiIi"  // 1E20
     "KkKkKkLlLlLlLlMm"  // 1E30
     "MmMmNnNnNnNnOoOo"  // 1E40
     "OoOoPpPpRrRrRrRr"  // 1E50
     "SsSsSsSsSsTtTtTt"  // 1E60
     "TtUuUuUuUuUuVvVv"  // 1E70
     "WwWwWwWwWwXxXxYy"  // 1E80
     "ZzZzZzhtwy......"  // 1E90
     "AaAaAaAaAaAaAaAa"  // 1EA0: Vietnamese
     "AaAaAaAaEeEeEeEe"  // 1EB0
     "EeEeEeEeIiIiOoOo"  // 1EC0
     "OoOoOoOoOoOoOoOo"  // 1ED0
     "OoOoUuUuUuUuUuUu"  // 1EE0
     "UuYyYyYyYy......"},  // 1EF0
};
static_assert(kBaseRuns[0].bases.size() == 0x180 - 0xC0 && kBaseRuns[3].bases.size() == 0x234 - 0x1CD &&
              kBaseRuns[4].bases.size() == 0x100);

// Accented letters whose base is not ASCII: Latin ligature and stroke
// letters, Greek with tonos or dialytika (and Greek singletons such as the
// question mark, which is ';'), Cyrillic with breve, diaeresis or macron,
// Arabic with hamza or madda, Devanagari with nukta.
constexpr std::pair<char32_t, char32_t> kOtherBases[] = {
    {0x01E2, 0x00C6}, {0x01E3, 0x00E6}, {0x01EE, 0x01B7}, {0x01EF, 0x0292}, {0x01FC, 0x00C6},
    {0x01FD, 0x00E6}, {0x01FE, 0x00D8}, {0x01FF, 0x00F8},
    {0x0374, 0x02B9}, {0x037E, 0x003B}, {0x0385, 0x00A8}, {0x0386, 0x0391}, {0x0387, 0x00B7},
    {0x0388, 0x0395}, {0x0389, 0x0397}, {0x038A, 0x0399}, {0x038C, 0x039F}, {0x038E, 0x03A5},
    {0x038F, 0x03A9}, {0x0390, 0x03B9}, {0x03AA, 0x0399}, {0x03AB, 0x03A5}, {0x03AC, 0x03B1},
    {0x03AD, 0x03B5}, {0x03AE, 0x03B7}, {0x03AF, 0x03B9}, {0x03B0, 0x03C5}, {0x03CA, 0x03B9},
    {0x03CB, 0x03C5}, {0x03CC, 0x03BF}, {0x03CD, 0x03C5}, {0x03CE, 0x03C9}, {0x03D3, 0x03D2},
    {0x03D4, 0x03D2}, {0x0400, 0x0415}, {0x0401, 0x0415}, {0x0403, 0x0413}, {0x0407, 0x0406},
    {0x040C, 0x041A}, {0x040D, 0x0418}, {0x040E, 0x0423}, {0x0419, 0x0418}, {0x0439, 0x0438},
    {0x0450, 0x0435}, {0x0451, 0x0435}, {0x0453, 0x0433}, {0x0457, 0x0456}, {0x045C, 0x043A},
    {0x045D, 0x0438}, {0x045E, 0x0443}, {0x0476, 0x0474}, {0x0477, 0x0475}, {0x04C1, 0x0416},
    {0x04C2, 0x0436}, {0x04D0, 0x0410}, {0x04D1, 0x0430}, {0x04D2, 0x0410}, {0x04D3, 0x0430},
    {0x04D6, 0x0415}, {0x04D7, 0x0435}, {0x04DA, 0x04D8}, {0x04DB, 0x04D9}, {0x04DC, 0x0416},
    {0x04DD, 0x0436}, {0x04DE, 0x0417}, {0x04DF, 0x0437}, {0x04E2, 0x0418}, {0x04E3, 0x0438},
    {0x04E4, 0x0418}, {0x04E5, 0x0438}, {0x04E6, 0x041E}, {0x04E7, 0x043E}, {0x04EA, 0x04E8},
    {0x04EB, 0x04E9}, {0x04EC, 0x042D}, {0x04ED, 0x044D}, {0x04EE, 0x0423}, {0x04EF, 0x0443},
    {0x04F0, 0x0423}, {0x04F1, 0x0443}, {0x04F2, 0x0423}, {0x04F3, 0x0443}, {0x04F4, 0x0427},
    {0x04F5, 0x0447}, {0x04F8, 0x042B}, {0x04F9, 0x044B}, {0x0622, 0x0627}, {0x0623, 0x0627},
    {0x0624, 0x0648}, {0x0625, 0x0627}, {0x0626, 0x064A}, {0x06C0, 0x06D5}, {0x06C2, 0x06C1},
    {0x06D3, 0x06D2}, {0x0929, 0x0928}, {0x0931, 0x0930}, {0x0934, 0x0933}, {0x0958, 0x0915},
    {0x0959, 0x0916}, {0x095A, 0x0917}, {0x095B, 0x091C}, {0x095C, 0x0921}, {0x095D, 0x0922},
    {0x095E, 0x092B}, {0x095F, 0x092F}, {0x1E9B, 0x017F},
};
static_assert(sorted_pairs(kOtherBases));

// Kana with a (semi-)voicing mark decompose into the plain kana + U+3099/309A.
char32_t kana_base(char32_t c) {
  if (c >= 0x30A0 && c <= 0x30F6 && c != 0x30F4) return kana_base(c - 0x60) + 0x60;  // katakana as hiragana
  if ((c >= 0x304C && c <= 0x3062 && c % 2 == 0) || c == 0x3065 || c == 0x3067 || c == 0x3069) return c - 1;
  if (c >= 0x3070 && c <= 0x307D && (c - 0x306F) % 3 != 0) return 0x306F + (c - 0x306F) / 3 * 3;
  if (c == 0x3094) return 0x3046;                 // ゔ
  if (c == 0x30F4) return 0x30A6;                 // ヴ
  if (c >= 0x30F7 && c <= 0x30FA) return c - 8;   // ヷ..ヺ
  if (c == 0x309E || c == 0x30FE) return c - 1;   // ゞ ヾ
  return c;
}

char32_t accent_base(char32_t c) {
  if (c < 0xC0) return c;
  for (const BaseRun& run : kBaseRuns)
    if (c >= run.first && c < run.first + run.bases.size()) {
      const char b = run.bases[c - run.first];
      if (b != '.') return char32_t(b);
    }
  const char32_t other = lookup_pair(kOtherBases, c);
  return other != c ? other : kana_base(c);
}

// BERT's _run_strip_accents: NFD, then every Mn dropped. Hangul syllables
// decompose into their jamo, as NFD does (they are letters, so they stay).
void append_without_accents(std::u32string& out, char32_t c) {
  if (c >= 0xAC00 && c <= 0xD7A3) {
    const char32_t s = c - 0xAC00;
    out += char32_t(0x1100 + s / 588);
    out += char32_t(0x1161 + s % 588 / 28);
    if (s % 28) out += char32_t(0x11A7 + s % 28);
    return;
  }
  if (in_table(kMarks, c)) return;
  out += accent_base(c);
}

// ---------------------------------------------------------------- files

std::string read_file(const std::string& path, const char* what) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw FormatError(std::string(what) + " " + path + ": cannot open");
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) throw FormatError(std::string(what) + " " + path + ": cannot read");
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) throw FormatError(std::string(what) + " " + path + ": read failed");
  return s.str();
}

// The file's lines without their "\n" or "\r\n"; no empty last line for a final newline.
std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    start = end + 1;
  }
  return lines;
}

SpecialIds find_specials(const SpecialNames& names, const std::string& where,
                         const std::function<std::optional<int32_t>(const std::string&)>& lookup) {
  const auto get = [&](const std::string& name) {
    const std::optional<int32_t> id = lookup(name);
    if (!id) throw FormatError(where + ": no special token '" + name + "'");
    return *id;
  };
  return {get(names.begin), get(names.end), get(names.pad), get(names.unk), get(names.mask)};
}

void check_length(const char* fn, int length, bool zero_allowed) {
  if ((zero_allowed && length == 0) || length >= 2) return;
  throw ArgumentError(std::string(fn) + ": length " + std::to_string(length) +
                      (zero_allowed ? " must be 0 (no limit) or at least 2" : " must be at least 2") +
                      " (room for the begin and end tokens)");
}

}  // namespace

// ================================================================ Tokenizer

std::vector<int32_t> Tokenizer::encode(const std::string& text, int max_length) const {
  check_length("encode", max_length, true);
  std::vector<int32_t> body = tokenize(text);
  if (max_length > 0 && body.size() + 2 > size_t(max_length)) body.resize(size_t(max_length) - 2);
  std::vector<int32_t> ids;
  ids.reserve(body.size() + 2);
  ids.push_back(special_.begin);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.push_back(special_.end);
  return ids;
}

Encoding Tokenizer::encode_padded(const std::string& text, int length) const {
  check_length("encode_padded", length, false);
  Encoding e;
  e.ids = encode(text, length);
  e.mask.assign(e.ids.size(), 1);
  e.ids.resize(size_t(length), special_.pad);
  e.mask.resize(size_t(length), 0);
  return e;
}

Batch Tokenizer::encode_batch(const std::vector<std::string>& texts, int max_length, Padding padding) const {
  if (texts.empty()) throw ArgumentError("encode_batch: no texts");
  check_length("encode_batch", max_length, padding == Padding::Longest);
  std::vector<std::vector<int32_t>> rows;
  size_t width = padding == Padding::Fixed ? size_t(max_length) : 0;
  for (const std::string& text : texts) {
    rows.push_back(encode(text, max_length));
    width = std::max(width, rows.back().size());
  }
  const int64_t b = int64_t(rows.size()), t = int64_t(width);
  std::vector<int32_t> ids(size_t(b * t), special_.pad);
  std::vector<float> mask(size_t(b * t), 0.0f);
  Batch batch;
  for (size_t i = 0; i < rows.size(); i++) {
    std::copy(rows[i].begin(), rows[i].end(), ids.begin() + int64_t(i) * t);
    std::fill_n(mask.begin() + int64_t(i) * t, rows[i].size(), 1.0f);
    batch.lengths.push_back(int(rows[i].size()));
  }
  batch.ids = Tensor::from_ints(ids, {b, t});
  batch.mask = Tensor::from_vector(mask, {b, t});
  return batch;
}

// ================================================================ byte-level BPE

namespace {

// GPT-2's byte alphabet: printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand
// for themselves; the other 68 bytes, in order, take U+0100, U+0101, ... so
// that no symbol is a space or a control character (a space becomes U+0120 'Ġ').
struct ByteAlphabet {
  std::array<std::string, 256> symbol;  // byte -> its character, UTF-8
  std::array<int, 0x144> byte;          // character -> byte, -1 for none (the last is U+0143)
  ByteAlphabet() {
    byte.fill(-1);
    char32_t next = 0x100;
    for (int b = 0; b < 256; b++) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? char32_t(b) : next++;
      append_utf8(symbol[size_t(b)], cp);
      byte[cp] = b;
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

enum class Kind { Letter, Number, Space, Other };

}  // namespace

// GPT-2's pattern, alternatives tried in order at each position:
//   's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+
// The optional prefix is one ASCII space. "\s+(?!\S)" takes a whitespace run
// but, when a non-space follows, leaves the run's last character for the
// next piece, so " world" keeps its space. A byte that is not valid UTF-8
// is "other": it joins a run of symbols.
std::vector<std::string> BpeTokenizer::pre_tokenize(const std::string& text) {
  struct Unit {
    size_t begin;
    Kind kind;
  };
  std::vector<Unit> units;  // one per code point (or invalid byte)
  for (size_t i = 0, len; i < text.size(); i += len) {
    const char32_t cp = decode_utf8(text, i, len);
    const Kind kind = cp == kInvalid ? Kind::Other
                      : is_letter(cp) ? Kind::Letter
                      : is_number(cp) ? Kind::Number
                      : is_space(cp)  ? Kind::Space
                                      : Kind::Other;
    units.push_back({i, kind});
  }
  const size_t n = units.size();
  const auto at = [&](size_t u) { return u < n ? units[u].begin : text.size(); };  // byte offset of unit u
  const auto kind = [&](size_t u) { return units[u].kind; };
  const auto run_end = [&](size_t u, Kind k) {  // first unit at or after u that is not k
    while (u < n && kind(u) == k) u++;
    return u;
  };

  std::vector<std::string> pieces;
  size_t u = 0;
  while (u < n) {
    size_t end = u;  // the piece is units [u, end)
    const size_t b = at(u);
    if (text[b] == '\'') {
      for (const char* c : {"s", "t", "re", "ve", "m", "ll", "d"})
        if (text.compare(b + 1, std::char_traits<char>::length(c), c) == 0) {
          end = u + 1 + std::char_traits<char>::length(c);  // ASCII: one unit per byte
          break;
        }
    }
    if (end == u) {
      const size_t body = text[b] == ' ' && u + 1 < n && kind(u + 1) != Kind::Space ? u + 1 : u;
      if (kind(body) != Kind::Space) {
        end = run_end(body, kind(body));  // letters, numbers or others, after an optional space
      } else {
        const size_t spaces = run_end(u, Kind::Space);
        // \s+(?!\S): back off one when a non-space follows; \s+ if that leaves nothing
        end = spaces < n && spaces - u > 1 ? spaces - 1 : spaces;
      }
    }
    pieces.push_back(text.substr(b, at(end) - b));
    u = end;
  }
  return pieces;
}

struct BpeTokenizer::Cache {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<int32_t>> ids;  // piece -> ids
  static constexpr size_t kMaxEntries = 1 << 16;              // cleared when full, so memory stays bounded
};

BpeTokenizer::~BpeTokenizer() = default;
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;

BpeTokenizer::BpeTokenizer(const std::string& vocab_json, const std::string& merges_txt, const SpecialNames& names)
    : cache_(std::make_unique<Cache>()) {
  // vocab.json: one object of token -> id, ids distinct and non-negative.
  const std::string where = "vocab " + vocab_json;
  const std::string text = read_file(vocab_json, "vocab");
  nlohmann::json vocab;
  try {
    vocab = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    const size_t upto = std::min(text.size(), e.byte > 0 ? size_t(e.byte - 1) : 0);
    const long line = 1 + std::count(text.begin(), text.begin() + std::ptrdiff_t(upto), '\n');
    throw FormatError(where + ":" + std::to_string(line) + ": not valid JSON (" + e.what() + ")");
  }
  if (!vocab.is_object()) throw FormatError(where + ": not a JSON object of token -> id");
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const nlohmann::json& v = it.value();
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
      throw FormatError(where + ": token '" + it.key() + "' has id " + v.dump() + ", not an integer in [0, 2^31)");
    const int32_t id = v.get<int32_t>();
    if (!tokens_.emplace(id, it.key()).second)
      throw FormatError(where + ": id " + std::to_string(id) + " belongs to both '" + tokens_[id] + "' and '" +
                        it.key() + "'");
    ids_.emplace(it.key(), id);
    vocab_size_ = std::max(vocab_size_, int64_t(id) + 1);
  }
  special_ = find_specials(names, where, [&](const std::string& t) { return token_id(t); });

  // merges.txt: "a b" per line, rank = order; "#version ..." may open it; blank lines are skipped.
  const std::vector<std::string> lines = split_lines(read_file(merges_txt, "merges"));
  int rank = 0;
  for (size_t i = 0; i < lines.size(); i++) {
    const std::string& line = lines[i];
    if (line.empty() || (i == 0 && line.rfind("#version", 0) == 0)) continue;
    const size_t space = line.find(' ');
    if (space == 0 || space == std::string::npos || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos || !valid_utf8(line))
      throw FormatError("merges " + merges_txt + ":" + std::to_string(i + 1) +
                        ": expected two symbols separated by one space, got '" + line + "'");
    ranks_.emplace(line, rank++);  // a repeated pair keeps its first (best) rank
  }
}

std::optional<int32_t> BpeTokenizer::token_id(const std::string& token) const {
  auto it = ids_.find(token);
  return it == ids_.end() ? std::nullopt : std::optional<int32_t>(it->second);
}

std::optional<std::string> BpeTokenizer::token(int32_t id) const {
  auto it = tokens_.find(id);
  return it == tokens_.end() ? std::nullopt : std::optional<std::string>(it->second);
}

// GPT-2's bpe(): while some adjacent pair has a merge, take the pair of lowest
// rank and join every occurrence of it, left to right.
std::vector<std::string> BpeTokenizer::bpe(const std::string& piece) const {
  const ByteAlphabet& alphabet = byte_alphabet();
  std::vector<std::string> symbols;
  for (unsigned char c : piece) symbols.push_back(alphabet.symbol[c]);
  while (symbols.size() > 1) {
    int best = INT_MAX;
    size_t best_at = 0;
    for (size_t i = 0; i + 1 < symbols.size(); i++) {
      auto it = ranks_.find(symbols[i] + " " + symbols[i + 1]);
      if (it != ranks_.end() && it->second < best) best = it->second, best_at = i;
    }
    if (best == INT_MAX) break;
    const std::string a = symbols[best_at], b = symbols[best_at + 1];
    std::vector<std::string> merged;
    for (size_t i = 0; i < symbols.size(); i++) {
      if (i + 1 < symbols.size() && symbols[i] == a && symbols[i + 1] == b) {
        merged.push_back(a + b);
        i++;
      } else {
        merged.push_back(symbols[i]);
      }
    }
    symbols = std::move(merged);
  }
  return symbols;
}

std::vector<int32_t> BpeTokenizer::tokenize(const std::string& text) const {
  std::vector<int32_t> out;
  for (const std::string& piece : pre_tokenize(text)) {
    {
      std::lock_guard<std::mutex> lock(cache_->mutex);
      auto it = cache_->ids.find(piece);
      if (it != cache_->ids.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        continue;
      }
    }
    std::vector<int32_t> ids;
    for (const std::string& symbol : bpe(piece)) ids.push_back(token_id(symbol).value_or(special_.unk));
    out.insert(out.end(), ids.begin(), ids.end());
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->ids.size() >= Cache::kMaxEntries) cache_->ids.clear();
    cache_->ids.emplace(piece, std::move(ids));
  }
  return out;
}

// Each token's characters back to the bytes they stand for; a character
// outside the byte alphabet (in a hand-made vocabulary) is kept as UTF-8.
std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  const ByteAlphabet& alphabet = byte_alphabet();
  std::string out;
  for (int32_t id : ids) {
    if (id == special_.begin || id == special_.end || id == special_.pad) continue;
    auto it = tokens_.find(id);
    if (it == tokens_.end()) throw ArgumentError("decode: id " + std::to_string(id) + " is not in the vocabulary");
    const std::string& token = it->second;
    for (size_t i = 0, len; i < token.size(); i += len) {
      const char32_t cp = decode_utf8(token, i, len);  // vocab.json strings are valid UTF-8
      if (cp < alphabet.byte.size() && alphabet.byte[cp] >= 0)
        out += char(alphabet.byte[cp]);
      else
        append_utf8(out, cp == kInvalid ? kReplacement : cp);
    }
  }
  return out;
}

// ================================================================ WordPiece

WordPieceTokenizer::WordPieceTokenizer(const std::string& vocab_txt, bool uncased, const SpecialNames& names)
    : uncased_(uncased) {
  const std::string where = "vocab " + vocab_txt;
  tokens_ = split_lines(read_file(vocab_txt, "vocab"));
  if (tokens_.empty()) throw FormatError(where + ": empty");
  if (tokens_.size() > size_t(INT32_MAX)) throw FormatError(where + ": too many tokens");
  for (size_t i = 0; i < tokens_.size(); i++) {
    const std::string line_at = where + ":" + std::to_string(i + 1) + ": ";
    if (tokens_[i].empty()) throw FormatError(line_at + "empty token");
    if (!valid_utf8(tokens_[i])) throw FormatError(line_at + "not valid UTF-8");
    auto [it, fresh] = ids_.emplace(tokens_[i], int32_t(i));
    if (!fresh)
      throw FormatError(line_at + "'" + tokens_[i] + "' again (first at line " + std::to_string(it->second + 1) + ")");
  }
  special_ = find_specials(names, where, [&](const std::string& t) { return token_id(t); });
}

std::optional<int32_t> WordPieceTokenizer::token_id(const std::string& token) const {
  auto it = ids_.find(token);
  return it == ids_.end() ? std::nullopt : std::optional<int32_t>(it->second);
}

std::optional<std::string> WordPieceTokenizer::token(int32_t id) const {
  if (id < 0 || size_t(id) >= tokens_.size()) return std::nullopt;
  return tokens_[size_t(id)];
}

// BERT's BasicTokenizer: clean, space out CJK, split on whitespace; per word
// lower-case and strip accents (uncased), then split off punctuation.
std::vector<std::string> WordPieceTokenizer::basic_tokenize(const std::string& text) const {
  std::u32string cleaned;
  for (char32_t c : decode_all(text)) {
    if (c == 0 || c == kReplacement || is_bert_control(c)) continue;
    if (is_bert_space(c)) {
      cleaned += ' ';
    } else if (in_table(kCjk, c)) {
      cleaned += U' ';
      cleaned += c;
      cleaned += U' ';
    } else {
      cleaned += c;
    }
  }

  std::vector<std::string> words;
  std::string current;
  const auto flush = [&] {
    if (!current.empty()) words.push_back(std::move(current));
    current.clear();
  };
  size_t i = 0;
  while (i < cleaned.size()) {
    if (cleaned[i] == ' ') {
      i++;
      continue;
    }
    const size_t end = std::min(cleaned.find(U' ', i), cleaned.size());
    std::u32string word = cleaned.substr(i, end - i);
    i = end;
    if (uncased_) {
      std::u32string plain;
      for (char32_t c : lower_word(word)) append_without_accents(plain, c);
      word = std::move(plain);
    }
    for (char32_t c : word) {
      if (is_bert_punctuation(c)) {
        flush();
        append_utf8(current, c);
        flush();
      } else {
        append_utf8(current, c);
      }
    }
    flush();
  }
  return words;
}

// Greedy longest match first: the longest prefix in the vocabulary, then the
// longest "##" continuation of the rest, and so on; any dead end makes the
// whole word [UNK].
std::vector<int32_t> WordPieceTokenizer::word_piece(const std::string& word) const {
  std::vector<size_t> starts;  // byte offset of each character, then the end
  for (size_t i = 0, len; i < word.size(); i += len) {
    decode_utf8(word, i, len);
    starts.push_back(i);
  }
  const size_t chars = starts.size();
  starts.push_back(word.size());
  if (chars > size_t(kMaxWordChars)) return {special_.unk};
  std::vector<int32_t> ids;
  size_t from = 0;
  while (from < chars) {
    std::optional<int32_t> found;
    size_t to = chars;
    for (; to > from; to--) {
      const std::string sub = (from > 0 ? "##" : "") + word.substr(starts[from], starts[to] - starts[from]);
      if ((found = token_id(sub))) break;
    }
    if (!found) return {special_.unk};
    ids.push_back(*found);
    from = to;
  }
  return ids;
}

std::vector<int32_t> WordPieceTokenizer::tokenize(const std::string& text) const {
  std::vector<int32_t> out;
  for (const std::string& word : basic_tokenize(text)) {
    const std::vector<int32_t> ids = word_piece(word);
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

std::string WordPieceTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id == special_.begin || id == special_.end || id == special_.pad) continue;
    const std::optional<std::string> t = token(id);
    if (!t) throw ArgumentError("decode: id " + std::to_string(id) + " is not in the vocabulary");
    if (t->rfind("##", 0) == 0) {
      out += t->substr(2);
    } else {
      if (!out.empty()) out += ' ';
      out += *t;
    }
  }
  return out;
}

}  // namespace st::data
