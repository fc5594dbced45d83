// Byte-level BPE from a Hugging Face tokenizer.json (GPT-2, LLaMA-3, SmolLM2, Qwen style): added and
// special tokens matched first, the pre-tokenizers ByteLevel (GPT-2's split pattern, add_prefix_space),
// Digits and Sequence, the bytes mapped to printable characters, merges applied lowest rank first, and a
// TemplateProcessing post-processor. Token for token what HF tokenizers gives (tests/text_test.cpp).
//
//     auto tok = peft::text::Bpe::from_file("smollm2/tokenizer.json");
//     auto ids = tok.encode("Hello world").ids;      // [19556, 905]
//     std::string back = tok.decode(ids);           // "Hello world"
#pragma once

#include <peft/core/error.hpp>
#include <peft/text/encoding.hpp>
#include <peft/text/unicode.hpp>

#include <nlohmann/json.hpp>

#include <array>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace peft::text {

namespace detail {

/// GPT-2's reversible byte -> printable character map (printable Latin-1 maps to itself, the rest to U+0100...).
inline const std::array<char32_t, 256>& byte_to_char() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      t[static_cast<std::size_t>(b)] = keep ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

/// GPT-2's pre-tokenization pattern
///   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
/// as a hand-written scanner: returns the end of the match that starts at `i`.
inline std::size_t gpt2_match(const std::u32string& s, std::size_t i) {
  const std::size_t n = s.size();
  const auto space = [&](std::size_t k) { return k < n && is_white_space(s[k]); };
  const auto other = [&](std::size_t k) { return k < n && !is_white_space(s[k]) && !is_letter(s[k]) && !is_number(s[k]); };
  if (s[i] == U'\'' && i + 1 < n) {
    const char32_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
    if (a == U's' || a == U't' || a == U'm' || a == U'd') return i + 2;
    if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return i + 3;
  }
  const std::size_t j = s[i] == U' ' ? i + 1 : i;  // the optional leading space
  for (const auto& cls : {+[](char32_t c) { return is_letter(c); }, +[](char32_t c) { return is_number(c); }}) {
    if (j < n && cls(s[j])) {
      std::size_t k = j;
      while (k < n && cls(s[k])) ++k;
      return k;
    }
  }
  if (other(j)) {
    std::size_t k = j;
    while (other(k)) ++k;
    return k;
  }
  // whitespace: \s+(?!\S) takes the run but leaves its last character when a non-space follows
  std::size_t k = i;
  while (space(k)) ++k;
  if (k == n || k - i == 1) return k;
  return k - 1;
}

}  // namespace detail

/// One step of the pre-tokenizer chain.
struct PreTokenizerStep {
  enum class Kind { ByteLevel, Digits } kind = Kind::ByteLevel;
  bool add_prefix_space = false;  ///< ByteLevel: a space before a text that does not start with one
  bool use_regex = true;          ///< ByteLevel: split with GPT-2's pattern
  bool individual_digits = false; ///< Digits: every digit alone (else runs of digits)
};

/// One item of a TemplateProcessing template: a sequence ("A"/"B") or a special token.
struct TemplateItem {
  bool is_sequence = true;
  std::string name;  ///< "A"/"B", or the special token's key in special_tokens
  std::int64_t type_id = 0;
};

class Bpe {
 public:
  static Bpe from_file(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    if (fs::is_directory(path)) return from_file(path / "tokenizer.json");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(path.string() + ": cannot open the tokenizer");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(path.string() + ": not valid JSON (" + e.what() + ")");
    }
    try {
      return Bpe(j, path.string());
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(path.string() + ": unexpected tokenizer.json layout (" + e.what() + ")");
    }
  }

  /// A text: the template's specials around the pieces, truncated to max_length tokens in all (0: no limit).
  Encoding encode(std::string_view text, bool add_special_tokens = true, std::size_t max_length = 0) const {
    return encode_impl(text, nullptr, add_special_tokens, max_length);
  }
  Encoding encode_pair(std::string_view a, std::string_view b, bool add_special_tokens = true,
                       std::size_t max_length = 0) const {
    return encode_impl(a, &b, add_special_tokens, max_length);
  }
  /// Many texts, right-padded with `pad_id` (default: the end-of-text token when the file names no pad).
  Batch encode_batch(const std::vector<std::string>& texts, std::size_t max_length = 0, std::int64_t pad_id = -1) const {
    std::vector<Encoding> encs;
    encs.reserve(texts.size());
    for (const auto& t : texts) encs.push_back(encode(t, true, max_length));
    return pad_batch(encs, pad_id >= 0 ? pad_id : std::max<std::int64_t>(pad_id_, 0));
  }
  /// The pieces' vocabulary strings (byte-level characters) without special tokens.
  std::vector<std::string> tokenize(std::string_view text) const { return encode(text, false).tokens; }

  /// Bytes back from the byte-level characters; special tokens left out when skip_special_tokens.
  /// Invalid UTF-8 from a cut multi-byte character becomes U+FFFD, as HF's decoder does.
  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens = true) const {
    std::string bytes;
    for (auto id : ids) {
      const auto& tok = id_to_token(id);
      if (const auto it = added_by_id_.find(id); it != added_by_id_.end()) {
        if (!(skip_special_tokens && it->second)) bytes += tok;
        continue;
      }
      for (char32_t c : utf8_decode(tok, source_)) {
        const auto b = char_to_byte_.find(c);
        if (b == char_to_byte_.end()) {
          utf8_append(bytes, c);
        } else {
          bytes.push_back(static_cast<char>(b->second));
        }
      }
    }
    return valid_utf8_or_replace(bytes);
  }

  std::int64_t token_to_id(std::string_view token) const {
    const auto it = ids_.find(std::string(token));
    return it == ids_.end() ? -1 : it->second;
  }
  const std::string& id_to_token(std::int64_t id) const {
    if (id < 0 || id >= static_cast<std::int64_t>(vocab_.size()) || vocab_[static_cast<std::size_t>(id)].empty())
      throw InputError(source_ + ": token id " + std::to_string(id) + " is outside the vocabulary of " +
                       std::to_string(vocab_.size()));
    return vocab_[static_cast<std::size_t>(id)];
  }
  std::size_t vocab_size() const { return vocab_.size(); }
  /// The padding id from the file's "padding" section, else -1.
  std::int64_t pad_id() const { return pad_id_; }

 private:
  Bpe(const nlohmann::json& j, std::string source) : source_(std::move(source)) {
    const auto& model = j.at("model");
    if (model.value("type", std::string()) != "BPE")
      throw ConfigError(source_ + ": model type \"" + model.value("type", std::string("?")) +
                        "\" is not BPE (WordPiece files load with peft::text::WordPiece)");
    if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() > 0)
      throw ConfigError(source_ + ": BPE dropout is a training-time option and is not supported");
    if (model.value("byte_fallback", false))
      throw ConfigError(source_ + ": byte_fallback (SentencePiece-style BPE) is not supported, only byte-level BPE");
    if (!model.value("continuing_subword_prefix", std::string()).empty() || !model.value("end_of_word_suffix", std::string()).empty())
      throw ConfigError(source_ + ": continuing_subword_prefix / end_of_word_suffix are not supported");
    ignore_merges_ = model.value("ignore_merges", false);
    const auto& vocab = model.at("vocab");
    vocab_.resize(vocab.size());
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const auto id = it.value().get<std::int64_t>();
      if (id < 0) throw ConfigError(source_ + ": vocabulary id " + std::to_string(id) + " of \"" + it.key() + "\" is negative");
      if (id >= static_cast<std::int64_t>(vocab_.size())) vocab_.resize(static_cast<std::size_t>(id) + 1);
      vocab_[static_cast<std::size_t>(id)] = it.key();
      ids_.emplace(it.key(), id);
    }
    std::int64_t rank = 0;
    for (const auto& m : model.at("merges")) {
      std::string a, b;
      if (m.is_string()) {
        const auto s = m.get<std::string>();
        const auto sp = s.find(' ');
        if (sp == std::string::npos) throw ConfigError(source_ + ": merge \"" + s + "\" is not two tokens");
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else {
        a = m.at(0).get<std::string>(), b = m.at(1).get<std::string>();
      }
      const auto ia = ids_.find(a), ib = ids_.find(b), merged = ids_.find(a + b);
      if (ia == ids_.end() || ib == ids_.end() || merged == ids_.end())
        throw ConfigError(source_ + ": merge \"" + a + "\" + \"" + b + "\" names a token that is not in the vocabulary");
      merges_.emplace(pair_key(ia->second, ib->second), std::pair{rank++, merged->second});
    }
    if (j.contains("normalizer") && !j["normalizer"].is_null())
      throw ConfigError(source_ + ": normalizer \"" + j["normalizer"].value("type", std::string("?")) +
                        "\" is not supported with byte-level BPE (none is)");
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) add_pre_tokenizer(j["pre_tokenizer"]);
    if (std::none_of(pre_.begin(), pre_.end(), [](const PreTokenizerStep& p) { return p.kind == PreTokenizerStep::Kind::ByteLevel; }))
      throw ConfigError(source_ + ": no ByteLevel pre-tokenizer: only byte-level BPE is supported");
    if (j.contains("post_processor") && !j["post_processor"].is_null()) read_post_processor(j["post_processor"]);
    if (j.contains("added_tokens"))
      for (const auto& a : j["added_tokens"]) {
        AddedToken t = added_token_from_json(a);
        if (t.id < 0) throw ConfigError(source_ + ": added token \"" + t.content + "\" has a negative id");
        if (t.id >= static_cast<std::int64_t>(vocab_.size())) vocab_.resize(static_cast<std::size_t>(t.id) + 1);
        vocab_[static_cast<std::size_t>(t.id)] = t.content;
        ids_[t.content] = t.id;
        added_by_id_[t.id] = t.special;
        added_.push_back(t);  // no normalizer: normalised and raw matching are the same
        added_contents_.push_back(utf8_decode(t.content, source_));
      }
    if (j.contains("padding") && j["padding"].is_object()) pad_id_ = j["padding"].value("pad_id", std::int64_t{-1});
    const auto& b2c = detail::byte_to_char();
    for (int b = 0; b < 256; ++b) {
      byte_token_[static_cast<std::size_t>(b)].clear();
      utf8_append(byte_token_[static_cast<std::size_t>(b)], b2c[static_cast<std::size_t>(b)]);
      char_to_byte_[b2c[static_cast<std::size_t>(b)]] = static_cast<unsigned char>(b);
      byte_id_[static_cast<std::size_t>(b)] = token_to_id(byte_token_[static_cast<std::size_t>(b)]);
    }
  }

  void add_pre_tokenizer(const nlohmann::json& p) {
    const auto type = p.value("type", std::string());
    if (type == "Sequence") {
      for (const auto& q : p.at("pretokenizers")) add_pre_tokenizer(q);
    } else if (type == "ByteLevel") {
      PreTokenizerStep s;
      s.add_prefix_space = p.value("add_prefix_space", false);
      s.use_regex = p.value("use_regex", true);
      pre_.push_back(s);
    } else if (type == "Digits") {
      PreTokenizerStep s;
      s.kind = PreTokenizerStep::Kind::Digits;
      s.individual_digits = p.value("individual_digits", false);
      pre_.push_back(s);
    } else {
      throw ConfigError(source_ + ": pre_tokenizer \"" + type + "\" is not supported (ByteLevel, Digits, Sequence)");
    }
  }

  void read_post_processor(const nlohmann::json& p) {
    const auto type = p.value("type", std::string());
    if (type == "ByteLevel") return;  // offsets only
    if (type == "Sequence") {
      for (const auto& q : p.at("processors")) read_post_processor(q);
      return;
    }
    if (type != "TemplateProcessing") throw ConfigError(source_ + ": post_processor \"" + type + "\" is not supported");
    const auto items = [&](const nlohmann::json& list) {
      std::vector<TemplateItem> out;
      for (const auto& it : list) {
        if (it.contains("Sequence"))
          out.push_back({true, it["Sequence"].at("id").get<std::string>(), it["Sequence"].value("type_id", std::int64_t{0})});
        else
          out.push_back({false, it.at("SpecialToken").at("id").get<std::string>(), it["SpecialToken"].value("type_id", std::int64_t{0})});
      }
      return out;
    };
    single_ = items(p.at("single"));
    pair_ = items(p.at("pair"));
    for (const auto& [key, v] : p.at("special_tokens").items()) {
      std::vector<std::pair<std::int64_t, std::string>> toks;
      const auto ids = v.at("ids").get<std::vector<std::int64_t>>();
      const auto strs = v.at("tokens").get<std::vector<std::string>>();
      for (std::size_t k = 0; k < ids.size() && k < strs.size(); ++k) toks.emplace_back(ids[k], strs[k]);
      specials_[key] = toks;
    }
    for (const auto* t : {&single_, &pair_})
      for (const auto& it : *t)
        if (!it.is_sequence && !specials_.count(it.name))
          throw ConfigError(source_ + ": the template names the special token \"" + it.name + "\" that special_tokens lacks");
  }

  /// Splits one piece (code points) with the pre-tokenizer chain into words.
  std::vector<std::u32string> pre_tokenize(std::u32string text) const {
    std::vector<std::u32string> words{std::move(text)};
    for (const auto& step : pre_) {
      std::vector<std::u32string> next;
      for (auto& w : words) {
        if (step.kind == PreTokenizerStep::Kind::Digits) {
          std::size_t i = 0;
          while (i < w.size()) {
            std::size_t k = i;
            if (is_number(w[i])) {
              k = step.individual_digits ? i + 1 : i;
              while (!step.individual_digits && k < w.size() && is_number(w[k])) ++k;
            } else {
              while (k < w.size() && !is_number(w[k])) ++k;
            }
            next.push_back(w.substr(i, k - i));
            i = k;
          }
        } else {
          if (step.add_prefix_space && !w.empty() && w[0] != U' ') w.insert(w.begin(), U' ');
          if (!step.use_regex) {
            next.push_back(std::move(w));
            continue;
          }
          for (std::size_t i = 0; i < w.size();) {
            const std::size_t k = detail::gpt2_match(w, i);
            next.push_back(w.substr(i, k - i));
            i = k;
          }
        }
      }
      words = std::move(next);
    }
    return words;
  }

  static std::uint64_t pair_key(std::int64_t a, std::int64_t b) {
    return (static_cast<std::uint64_t>(a) << 32) | static_cast<std::uint64_t>(b & 0xFFFFFFFF);
  }

  /// BPE on one word's bytes: merges, lowest rank first (leftmost among equals), as HF does. Symbols are
  /// token ids; a byte the vocabulary lacks (SmolLM2 has no token for most control bytes) is dropped,
  /// as HF's BPE does without an unk_token.
  void bpe_word(const std::string& bytes, std::vector<std::pair<std::int64_t, std::string>>& out) const {
    if (ignore_merges_) {
      std::string mapped;
      for (unsigned char b : bytes) mapped += byte_token_[b];
      if (const auto it = ids_.find(mapped); it != ids_.end()) {
        out.emplace_back(it->second, std::move(mapped));
        return;
      }
    }
    std::vector<std::int64_t> sym;
    sym.reserve(bytes.size());
    for (unsigned char b : bytes) sym.push_back(byte_id_[b]);
    while (sym.size() > 1) {
      std::int64_t best = std::numeric_limits<std::int64_t>::max(), merged = -1;
      std::size_t at = 0;
      for (std::size_t k = 0; k + 1 < sym.size(); ++k) {
        if (sym[k] < 0 || sym[k + 1] < 0) continue;
        const auto it = merges_.find(pair_key(sym[k], sym[k + 1]));
        if (it != merges_.end() && it->second.first < best) best = it->second.first, merged = it->second.second, at = k;
      }
      if (merged < 0) break;
      sym[at] = merged;
      sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(at) + 1);
    }
    for (auto id : sym)
      if (id >= 0) out.emplace_back(id, vocab_[static_cast<std::size_t>(id)]);
  }

  std::vector<std::pair<std::int64_t, std::string>> encode_content(std::string_view text) const {
    std::vector<std::pair<std::int64_t, std::string>> out;
    for (auto& piece : split_added(utf8_decode(text, source_), added_, added_contents_)) {
      if (piece.added_id >= 0) {
        out.emplace_back(piece.added_id, vocab_[static_cast<std::size_t>(piece.added_id)]);
        continue;
      }
      for (const auto& w : pre_tokenize(std::move(piece.text))) bpe_word(utf8_encode(w), out);
    }
    return out;
  }

  Encoding encode_impl(std::string_view a, const std::string_view* b, bool special, std::size_t max_length) const {
    std::vector<std::int64_t> ia, ib;
    std::vector<std::string> ta, tb;
    for (auto& [id, t] : encode_content(a)) ia.push_back(id), ta.push_back(std::move(t));
    if (b != nullptr)
      for (auto& [id, t] : encode_content(*b)) ib.push_back(id), tb.push_back(std::move(t));
    const auto& tpl = b != nullptr ? pair_ : single_;
    std::size_t extra = 0;
    if (special)
      for (const auto& it : tpl)
        if (!it.is_sequence) extra += specials_.at(it.name).size();
    if (max_length > 0) {
      if (max_length < extra)
        throw InputError(source_ + ": max_length " + std::to_string(max_length) + " leaves no room for the " +
                         std::to_string(extra) + " special tokens");
      truncate_longest_first(ia, ta, b != nullptr ? &ib : nullptr, b != nullptr ? &tb : nullptr, max_length - extra);
    }
    Encoding e;
    if (!special || tpl.empty()) {
      for (std::size_t k = 0; k < ia.size(); ++k) e.push(ia[k], std::move(ta[k]), 0, false);
      for (std::size_t k = 0; k < ib.size(); ++k) e.push(ib[k], std::move(tb[k]), 1, false);
      return e;
    }
    for (const auto& it : tpl) {
      if (!it.is_sequence) {
        for (const auto& [id, t] : specials_.at(it.name)) e.push(id, t, it.type_id, true);
      } else {
        auto& ids = it.name == "A" ? ia : ib;
        auto& toks = it.name == "A" ? ta : tb;
        for (std::size_t k = 0; k < ids.size(); ++k) e.push(ids[k], std::move(toks[k]), it.type_id, false);
      }
    }
    return e;
  }

  static std::string valid_utf8_or_replace(const std::string& s) {
    std::string out;
    std::size_t i = 0;
    while (i < s.size()) {
      std::size_t len = 1;
      const auto b0 = static_cast<unsigned char>(s[i]);
      if (b0 >= 0xF0) len = 4; else if (b0 >= 0xE0) len = 3; else if (b0 >= 0xC0) len = 2;
      bool ok = b0 < 0x80 || (b0 >= 0xC2 && b0 <= 0xF4 && i + len <= s.size());
      if (ok && b0 >= 0x80) {
        try {
          utf8_decode(std::string_view(s).substr(i, len));
        } catch (const InputError&) {
          ok = false;
        }
      }
      if (ok) {
        out.append(s, i, len);
        i += len;
      } else {
        out += "\xEF\xBF\xBD";
        ++i;
      }
    }
    return out;
  }

  std::string source_;
  std::vector<std::string> vocab_;
  std::unordered_map<std::string, std::int64_t> ids_;
  std::unordered_map<std::uint64_t, std::pair<std::int64_t, std::int64_t>> merges_;  // (a, b) -> (rank, merged id)
  std::vector<PreTokenizerStep> pre_;
  std::vector<TemplateItem> single_, pair_;
  std::unordered_map<std::string, std::vector<std::pair<std::int64_t, std::string>>> specials_;
  std::vector<AddedToken> added_;
  std::vector<std::u32string> added_contents_;
  std::unordered_map<std::int64_t, bool> added_by_id_;  // id -> special
  std::array<std::string, 256> byte_token_;
  std::array<std::int64_t, 256> byte_id_{};  // each byte's token id, -1 where the vocabulary lacks it
  std::unordered_map<char32_t, unsigned char> char_to_byte_;
  bool ignore_merges_ = false;
  std::int64_t pad_id_ = -1;
};

}  // namespace peft::text
