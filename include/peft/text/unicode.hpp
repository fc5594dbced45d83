// Unicode for the tokenizers: strict UTF-8, general categories, canonical decomposition (NFD) and
// lowercasing, from the tables in detail/unicode_data.hpp (generated from the UCD; see the script named there).
#pragma once

#include <peft/core/error.hpp>
#include <peft/text/detail/unicode_data.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <iterator>
#include <string>
#include <string_view>

namespace peft::text {

using Category = detail::ucd::Category;

/// Decodes UTF-8. Malformed input (a stray continuation byte, a truncated sequence, an overlong form, a
/// surrogate, a value past U+10FFFF) throws InputError naming `what` and the byte offset: text is never
/// silently altered.
inline std::u32string utf8_decode(std::string_view s, std::string_view what = "text") {
  std::u32string out;
  out.reserve(s.size());
  std::size_t i = 0;
  const auto bad = [&](const char* why) {
    throw InputError(std::string(what) + ": invalid UTF-8 at byte " + std::to_string(i) + " (" + why + ")");
  };
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    int len;
    char32_t cp;
    if ((b0 & 0xE0) == 0xC0) { len = 2; cp = b0 & 0x1F; }
    else if ((b0 & 0xF0) == 0xE0) { len = 3; cp = b0 & 0x0F; }
    else if ((b0 & 0xF8) == 0xF0) { len = 4; cp = b0 & 0x07; }
    else bad(b0 >= 0x80 && b0 < 0xC0 ? "a continuation byte where a character starts" : "an invalid lead byte");
    if (i + static_cast<std::size_t>(len) > s.size()) bad("the text ends inside a character");
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
      if ((b & 0xC0) != 0x80) bad("a character cut short");
      cp = (cp << 6) | (b & 0x3F);
    }
    static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len]) bad("an overlong encoding");
    if (cp > 0x10FFFF) bad("a value past U+10FFFF");
    if (cp >= 0xD800 && cp < 0xE000) bad("a surrogate");
    out.push_back(cp);
    i += static_cast<std::size_t>(len);
  }
  return out;
}

inline void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

inline std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

namespace detail {
template <std::size_t N>
std::uint8_t range_lookup(const ucd::Range (&table)[N], char32_t cp, std::uint8_t fallback) {
  const auto* end = table + N;
  const auto* it = std::upper_bound(table, end, cp, [](char32_t c, const ucd::Range& r) { return c < r.lo; });
  if (it == table) return fallback;
  --it;
  return cp <= it->hi ? it->value : fallback;
}
}  // namespace detail

inline Category category(char32_t cp) {
  if (cp < 0x80) {  // fast path: ASCII through the table too, but cached in a static array
    static const auto ascii = [] {
      std::array<std::uint8_t, 128> a{};
      for (char32_t c = 0; c < 128; ++c)
        a[c] = detail::range_lookup(detail::ucd::kCategories, c, static_cast<std::uint8_t>(Category::Cn));
      return a;
    }();
    return static_cast<Category>(ascii[cp]);
  }
  return static_cast<Category>(detail::range_lookup(detail::ucd::kCategories, cp, static_cast<std::uint8_t>(Category::Cn)));
}

inline bool is_letter(char32_t cp) { return category(cp) <= Category::Lo; }
inline bool is_mark(char32_t cp) { const auto c = category(cp); return c >= Category::Mn && c <= Category::Me; }
inline bool is_number(char32_t cp) { const auto c = category(cp); return c >= Category::Nd && c <= Category::No; }
inline bool is_punctuation(char32_t cp) { const auto c = category(cp); return c >= Category::Pc && c <= Category::Po; }
inline bool is_symbol(char32_t cp) { const auto c = category(cp); return c >= Category::Sm && c <= Category::So; }
inline bool is_other(char32_t cp) { return category(cp) >= Category::Cc; }  // Cc Cf Cs Co Cn
/// The White_Space property (what Rust's char::is_whitespace and regex's \s test).
inline bool is_white_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}
inline std::uint8_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  return detail::range_lookup(detail::ucd::kCombiningClasses, cp, 0);
}

/// Appends the full canonical decomposition of one code point.
inline void decompose_append(std::u32string& out, char32_t cp) {
  constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
  constexpr char32_t kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = 11172;
  if (cp >= kSBase && cp < kSBase + kSCount) {  // Hangul syllables: algorithmic
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp < 0xC0) {
    out.push_back(cp);
    return;
  }
  const auto& table = detail::ucd::kDecompositions;
  const auto* end = std::end(table);
  const auto* it = std::lower_bound(std::begin(table), end, cp,
                                    [](const detail::ucd::Decomposition& d, char32_t c) { return d.cp < c; });
  if (it == end || it->cp != cp) {
    out.push_back(cp);
    return;
  }
  out.append(detail::ucd::kDecompositionData + it->offset, it->length);
}

/// Canonical decomposition (NFD): full decomposition, then marks reordered by combining class (stable).
inline std::u32string nfd(std::u32string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (char32_t c : s) decompose_append(out, c);
  // canonical ordering: a stable sort of each run of nonzero combining classes
  for (std::size_t i = 0; i < out.size();) {
    if (combining_class(out[i]) == 0) { ++i; continue; }
    std::size_t j = i;
    while (j < out.size() && combining_class(out[j]) != 0) ++j;
    if (j - i > 1)
      std::stable_sort(out.begin() + static_cast<std::ptrdiff_t>(i), out.begin() + static_cast<std::ptrdiff_t>(j),
                       [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  return out;
}

/// Appends the lowercase of one code point (full mapping, no context: U+0130 gives two code points).
inline void lower_append(std::u32string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  const auto& single = detail::ucd::kLowercase;
  const auto* it = std::lower_bound(std::begin(single), std::end(single), cp,
                                    [](const detail::ucd::Lower& m, char32_t c) { return m.cp < c; });
  if (it != std::end(single) && it->cp == cp) {
    out.push_back(it->lower);
    return;
  }
  for (const auto& m : detail::ucd::kLowercaseMulti)
    if (m.cp == cp) {
      out.append(m.lower, m.length);
      return;
    }
  out.push_back(cp);
}

inline std::u32string lower(std::u32string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (char32_t c : s) lower_append(out, c);
  return out;
}

}  // namespace peft::text
