// Labelled text from files: CSV (RFC 4180: quoted fields, "" escapes, newlines inside quotes, a UTF-8
// byte-order mark), WordNet's glosses with their lexicographer category, and where the data lives.
#pragma once

#include <peft/core/error.hpp>
#include <peft/text/unicode.hpp>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace peft::text {

/// One labelled example: a text, or a pair of texts when `pair` is not empty (encoded as
/// [CLS] text [SEP] pair [SEP] by a BERT tokenizer).
struct LabelledText {
  std::string label;
  std::string text;
  std::string pair = {};
};

/// The data cache that scripts/fetch_data.sh fills: $PEFT_DATA_DIR, else $HOME/.cache/peft-cpp.
inline std::filesystem::path data_dir() {
  if (const char* d = std::getenv("PEFT_DATA_DIR"); d != nullptr && *d != '\0') return d;
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home != nullptr ? home : ".") / ".cache" / "peft-cpp";
}

inline std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path.string() + ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// Parses CSV text into rows of fields. A leading UTF-8 BOM is dropped; "\r\n" and "\n" end rows.
/// An unterminated quote throws InputError naming `what` and the row.
inline std::vector<std::vector<std::string>> parse_csv(std::string_view s, std::string_view what = "csv") {
  std::vector<std::vector<std::string>> rows;
  if (s.substr(0, 3) == "\xEF\xBB\xBF") s.remove_prefix(3);
  std::vector<std::string> row;
  std::string field;
  bool quoted = false, field_started = false;
  std::size_t row_start_line = 1, line = 1;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < s.size() && s[i + 1] == '"') {
          field.push_back('"');
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++line;
        field.push_back(c);
      }
      continue;
    }
    if (c == '"' && !field_started) {
      quoted = field_started = true;
    } else if (c == ',') {
      row.push_back(std::move(field));
      field.clear();
      field_started = false;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      ++line;
      row.push_back(std::move(field));
      field.clear();
      field_started = false;
      if (!(row.size() == 1 && row[0].empty())) rows.push_back(std::move(row));
      row.clear();
      row_start_line = line;
    } else {
      field.push_back(c);
      field_started = true;
    }
  }
  if (quoted)
    throw InputError(std::string(what) + ": a quoted field opened in the row at line " + std::to_string(row_start_line) +
                     " is never closed");
  if (field_started || !row.empty()) {
    row.push_back(std::move(field));
    rows.push_back(std::move(row));
  }
  return rows;
}

/// (label, text) rows of a CSV file, from the given columns. Every row must have both columns and
/// valid UTF-8 text; otherwise InputError names the file and the row.
inline std::vector<LabelledText> read_labelled_csv(const std::filesystem::path& path, std::size_t label_column = 0,
                                                   std::size_t text_column = 1, bool header = false) {
  const auto rows = parse_csv(read_text_file(path), path.string());
  std::vector<LabelledText> out;
  out.reserve(rows.size());
  for (std::size_t r = header ? 1 : 0; r < rows.size(); ++r) {
    const auto& row = rows[r];
    if (row.size() <= std::max(label_column, text_column))
      throw InputError(path.string() + ": row " + std::to_string(r + 1) + " has " + std::to_string(row.size()) +
                       " columns, expected at least " + std::to_string(std::max(label_column, text_column) + 1));
    utf8_decode(row[text_column], path.string() + " row " + std::to_string(r + 1));  // validates
    out.push_back({row[label_column], row[text_column]});
  }
  return out;
}

/// WordNet 3.0's 45 lexicographer files (lexnames(5WN)), by number.
inline const std::array<const char*, 45>& wordnet_lexnames() {
  static const std::array<const char*, 45> names = {
      "adj.all",           "adj.pert",          "adv.all",        "noun.Tops",         "noun.act",
      "noun.animal",       "noun.artifact",     "noun.attribute", "noun.body",         "noun.cognition",
      "noun.communication", "noun.event",       "noun.feeling",   "noun.food",         "noun.group",
      "noun.location",     "noun.motive",       "noun.object",    "noun.person",       "noun.phenomenon",
      "noun.plant",        "noun.possession",   "noun.process",   "noun.quantity",     "noun.relation",
      "noun.shape",        "noun.state",        "noun.substance", "noun.time",         "verb.body",
      "verb.change",       "verb.cognition",    "verb.communication", "verb.competition", "verb.consumption",
      "verb.contact",      "verb.creation",     "verb.emotion",   "verb.motion",       "verb.perception",
      "verb.possession",   "verb.social",       "verb.stative",   "verb.weather",      "adj.ppl"};
  return names;
}

/// One WordNet synset: its lexicographer category, its words (underscores as spaces, adjective markers
/// such as "(p)" removed) and its gloss (the definition, then any quoted examples after "; ").
struct WordNetSynset {
  std::string lexname;
  std::vector<std::string> words;
  std::string gloss;
  /// The gloss without its examples: up to the first "; \"" (or the whole gloss).
  std::string definition() const {
    const auto cut = gloss.find("; \"");
    return cut == std::string::npos ? gloss : gloss.substr(0, cut);
  }
};

/// Every synset of WordNet's data.noun, data.verb, data.adj and data.adv in `dir` (Debian wordnet-base:
/// /usr/share/wordnet), in file order. A line that is not a synset line throws InputError naming the
/// file and line.
inline std::vector<WordNetSynset> read_wordnet_synsets(const std::filesystem::path& dir) {
  std::vector<WordNetSynset> out;
  for (const char* pos : {"noun", "verb", "adj", "adv"}) {
    const auto path = dir / (std::string("data.") + pos);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(path.string() + ": cannot open (Debian package wordnet-base; scripts/fetch_data.sh)");
    std::string line;
    for (std::size_t n = 1; std::getline(in, line); ++n) {
      if (line.empty() || line[0] == ' ') continue;  // the licence header
      auto bad = [&] { return InputError(path.string() + ": line " + std::to_string(n) + " is not a WordNet synset line"); };
      const auto bar = line.find(" | ");
      std::istringstream fields(line.substr(0, bar));
      std::string offset, ss_type, count;
      int lexfile = -1;
      fields >> offset >> lexfile >> ss_type >> count;
      if (bar == std::string::npos || lexfile < 0 || lexfile >= 45 || !fields) throw bad();
      WordNetSynset s;
      s.lexname = wordnet_lexnames()[static_cast<std::size_t>(lexfile)];
      std::size_t words = 0;
      try {
        words = std::stoul(count, nullptr, 16);
      } catch (const std::exception&) {
        throw bad();
      }
      for (std::size_t w = 0; w < words; ++w) {
        std::string word, lex_id;
        if (!(fields >> word >> lex_id)) throw bad();
        if (const auto paren = word.find('('); paren != std::string::npos && word.back() == ')') word.erase(paren);
        std::replace(word.begin(), word.end(), '_', ' ');
        s.words.push_back(std::move(word));
      }
      s.gloss = line.substr(bar + 3);
      while (!s.gloss.empty() && (s.gloss.back() == ' ' || s.gloss.back() == '\r')) s.gloss.pop_back();
      out.push_back(std::move(s));
    }
  }
  return out;
}

/// Every synset's gloss from WordNet's data files in `dir`, labelled with its lexicographer file name
/// (45 categories).
inline std::vector<LabelledText> read_wordnet_glosses(const std::filesystem::path& dir) {
  std::vector<LabelledText> out;
  for (auto& s : read_wordnet_synsets(dir)) out.push_back({std::move(s.lexname), std::move(s.gloss)});
  return out;
}

}  // namespace peft::text
