// BERT's tokenizer: the BertNormalizer (clean-up, CJK splitting, accent stripping, lower-casing), the BERT
// pre-tokenizer (whitespace, punctuation), greedy longest-match WordPiece with "##" continuations, and
// [CLS] A [SEP] (B [SEP]) templates. Token for token what Hugging Face tokenizers gives for the same
// tokenizer.json or vocab.txt (tests/text_test.cpp checks it on 129,609 texts of real corpora).
// Character classes come from Unicode 14 (detail/unicode_data.hpp); HF tokenizers' BERT normaliser uses
// an older table (the unicode_categories crate), so a character assigned after that as a format character
// or punctuation (U+0890 ARABIC POUND MARK ABOVE, Unicode 14) is dropped or split here and kept there.
//
//     auto tok = peft::text::WordPiece::from_file("all-MiniLM-L6-v2");   // a folder, tokenizer.json or vocab.txt
//     auto enc = tok.encode("The movie was great!");                    // ids, type ids, tokens
//     auto batch = tok.encode_batch({"a", "b c"}, /*max_length=*/64);    // padded [B, T] tensors
#pragma once

#include <peft/core/error.hpp>
#include <peft/text/encoding.hpp>
#include <peft/text/unicode.hpp>

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace peft::text {

struct WordPieceOptions {
  bool clean_text = true;            ///< drop control characters, map whitespace to ' '
  bool handle_chinese_chars = true;  ///< put spaces around CJK ideographs
  bool lowercase = true;
  std::optional<bool> strip_accents;  ///< unset: follows `lowercase` (as BERT does)
  std::string unk_token = "[UNK]";
  std::string cls_token = "[CLS]";
  std::string sep_token = "[SEP]";
  std::string pad_token = "[PAD]";
  std::string continuing_subword_prefix = "##";
  std::size_t max_input_chars_per_word = 100;  ///< longer words become [UNK]
};

class WordPiece {
 public:
  /// `vocab[i]` is the token of id i; the options' unk, cls and sep tokens must be in it. `added` are
  /// matched whole in the text before anything else (tokenizer.json's added_tokens).
  WordPiece(std::vector<std::string> vocab, WordPieceOptions options, std::vector<AddedToken> added = {},
            std::string source = "vocabulary")
      : options_(std::move(options)), vocab_(std::move(vocab)), source_(std::move(source)) {
    ids_.reserve(vocab_.size());
    for (std::size_t i = 0; i < vocab_.size(); ++i) ids_.emplace(vocab_[i], static_cast<std::int64_t>(i));
    unk_id_ = require(options_.unk_token, "unk_token");
    cls_id_ = require(options_.cls_token, "cls_token");
    sep_id_ = require(options_.sep_token, "sep_token");
    pad_id_ = token_to_id(options_.pad_token);
    if (added.empty())  // as transformers does with a vocab.txt: the special tokens are matched whole in text
      for (const auto& t : {options_.pad_token, options_.unk_token, options_.cls_token, options_.sep_token, std::string("[MASK]")})
        if (const auto id = token_to_id(t); id >= 0) added.push_back({t, id, true});
    for (auto& a : added) {
      if (a.id < 0) throw ConfigError(source_ + ": added token \"" + a.content + "\" has a negative id");
      if (a.id >= static_cast<std::int64_t>(vocab_.size())) vocab_.resize(static_cast<std::size_t>(a.id) + 1);
      if (vocab_[static_cast<std::size_t>(a.id)].empty()) vocab_[static_cast<std::size_t>(a.id)] = a.content;
      ids_.emplace(a.content, a.id);
      (a.normalized ? normalized_added_ : raw_added_).push_back(a);
    }
    for (const auto& a : raw_added_) raw_contents_.push_back(utf8_decode(a.content, source_));
    for (const auto& a : normalized_added_) normalized_contents_.push_back(normalize32(utf8_decode(a.content, source_)));
  }

  /// From a tokenizer.json (model "WordPiece"), a vocab.txt (with tokenizer_config.json beside it for
  /// do_lower_case / strip_accents / tokenize_chinese_chars), or a folder holding either
  /// (tokenizer.json preferred).
  static WordPiece from_file(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    if (fs::is_directory(path)) {
      if (fs::exists(path / "tokenizer.json")) return from_file(path / "tokenizer.json");
      if (fs::exists(path / "vocab.txt")) return from_file(path / "vocab.txt");
      throw IoError(path.string() + ": no tokenizer.json or vocab.txt in this folder");
    }
    if (path.extension() == ".json") return from_tokenizer_json(path);
    return from_vocab_txt(path);
  }

  // ---- the pipeline, step by step ----

  /// The BertNormalizer on one text (no added-token handling).
  std::string normalize(std::string_view text) const { return utf8_encode(normalize32(utf8_decode(text, source_))); }

  /// Words after normalisation and pre-tokenisation, then their word pieces (no special tokens).
  std::vector<std::string> tokenize(std::string_view text) const {
    std::vector<std::string> out;
    for (const auto& e : encode_content(text)) out.push_back(e.second);
    return out;
  }

  /// One text: [CLS] pieces [SEP] (add_special_tokens), truncated to max_length tokens in all (0: no limit).
  Encoding encode(std::string_view text, bool add_special_tokens = true, std::size_t max_length = 0) const {
    return encode_impl(text, nullptr, add_special_tokens, max_length);
  }
  /// A pair: [CLS] A [SEP] B [SEP], type ids 0 then 1; truncation takes tokens from the longer first.
  Encoding encode_pair(std::string_view a, std::string_view b, bool add_special_tokens = true,
                       std::size_t max_length = 0) const {
    return encode_impl(a, &b, add_special_tokens, max_length);
  }
  /// Many texts, padded on the right to the longest (each truncated to max_length, 0: no limit).
  Batch encode_batch(const std::vector<std::string>& texts, std::size_t max_length = 0) const {
    std::vector<Encoding> encs;
    encs.reserve(texts.size());
    for (const auto& t : texts) encs.push_back(encode(t, true, max_length));
    return pad_batch(encs, pad_id_ >= 0 ? pad_id_ : 0);
  }

  /// Back to text the way HF's WordPiece decoder does: pieces joined with spaces, "##" pieces glued on,
  /// and (its "cleanup") a space dropped before . ? ! , tokens; special tokens left out (skip_special_tokens).
  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens = true) const {
    std::string out;
    bool first = true;
    const auto& pre = options_.continuing_subword_prefix;
    for (auto id : ids) {
      const auto& tok = id_to_token(id);
      if (skip_special_tokens && is_special(id)) continue;
      std::string piece;
      if (!first && tok.compare(0, pre.size(), pre) == 0)
        piece = tok.substr(pre.size());
      else
        piece = (first ? "" : " ") + tok;
      first = false;
      // the cleanup works on each piece with its leading space, as HF tokenizers applies it
      for (const auto& [from, to] : {std::pair{" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
                                     {" n't", "n't"}, {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"},
                                     {" 've", "'ve"}, {" 're", "'re"}})
        for (std::size_t at = piece.find(from); at != std::string::npos; at = piece.find(from, at + std::strlen(to)))
          piece.replace(at, std::strlen(from), to);
      out += piece;
    }
    return out;
  }

  std::int64_t token_to_id(std::string_view token) const {
    const auto it = ids_.find(std::string(token));
    return it == ids_.end() ? -1 : it->second;
  }
  const std::string& id_to_token(std::int64_t id) const {
    if (id < 0 || id >= static_cast<std::int64_t>(vocab_.size()))
      throw InputError(source_ + ": token id " + std::to_string(id) + " is outside the vocabulary of " +
                       std::to_string(vocab_.size()));
    return vocab_[static_cast<std::size_t>(id)];
  }
  std::size_t vocab_size() const { return vocab_.size(); }
  std::int64_t cls_id() const { return cls_id_; }
  std::int64_t sep_id() const { return sep_id_; }
  std::int64_t unk_id() const { return unk_id_; }
  std::int64_t pad_id() const { return pad_id_; }
  const WordPieceOptions& options() const { return options_; }

 private:
  std::int64_t require(const std::string& token, const char* what) const {
    const auto id = token_to_id(token);
    if (id < 0) throw ConfigError(source_ + ": the " + std::string(what) + " \"" + token + "\" is not in the vocabulary");
    return id;
  }
  bool is_special(std::int64_t id) const {
    for (const auto* list : {&raw_added_, &normalized_added_})
      for (const auto& a : *list)
        if (a.id == id && a.special) return true;
    return false;
  }

  static bool is_chinese_char(char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
  }
  static bool is_bert_whitespace(char32_t c) { return c == U'\t' || c == U'\n' || c == U'\r' || is_white_space(c); }
  // Cc, Cf, Co (and Cs): removed. Unassigned code points (Cn) stay, and become [UNK], as in HF tokenizers.
  static bool is_bert_control(char32_t c) {
    if (c == U'\t' || c == U'\n' || c == U'\r') return false;
    const auto k = category(c);
    return k == Category::Cc || k == Category::Cf || k == Category::Co || k == Category::Cs;
  }
  static bool is_bert_punctuation(char32_t c) {
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126) ||
           is_punctuation(c);
  }

  std::u32string normalize32(const std::u32string& in) const {
    std::u32string s;
    s.reserve(in.size());
    for (char32_t c : in) {
      if (options_.clean_text) {
        if (c == 0 || c == 0xFFFD || is_bert_control(c)) continue;
        if (is_bert_whitespace(c)) c = U' ';
      }
      if (options_.handle_chinese_chars && is_chinese_char(c)) {
        s.push_back(U' '), s.push_back(c), s.push_back(U' ');
      } else {
        s.push_back(c);
      }
    }
    if (options_.strip_accents.value_or(options_.lowercase)) {
      auto d = nfd(s);
      s.clear();
      for (char32_t c : d)
        if (category(c) != Category::Mn) s.push_back(c);
    }
    if (options_.lowercase) s = lower(s);
    return s;
  }

  /// WordPiece on one word; appends (id, piece) pairs.
  void word_pieces(const std::u32string& word, std::vector<std::pair<std::int64_t, std::string>>& out) const {
    if (word.size() > options_.max_input_chars_per_word) {
      out.emplace_back(unk_id_, options_.unk_token);
      return;
    }
    const std::size_t mark = out.size();
    std::size_t start = 0;
    while (start < word.size()) {
      std::size_t end = word.size();
      std::int64_t found = -1;
      std::string piece;
      while (start < end) {
        piece = (start > 0 ? options_.continuing_subword_prefix : std::string()) +
                utf8_encode(std::u32string_view(word).substr(start, end - start));
        const auto it = ids_.find(piece);
        if (it != ids_.end()) {
          found = it->second;
          break;
        }
        --end;
      }
      if (found < 0) {
        out.resize(mark);
        out.emplace_back(unk_id_, options_.unk_token);
        return;
      }
      out.emplace_back(found, std::move(piece));
      start = end;
    }
  }

  /// Pre-tokenises a normalised piece (split on whitespace, each punctuation mark alone) into pieces.
  void pieces_of(const std::u32string& s, std::vector<std::pair<std::int64_t, std::string>>& out) const {
    std::u32string word;
    const auto flush = [&] {
      if (!word.empty()) word_pieces(word, out), word.clear();
    };
    for (char32_t c : s) {
      if (is_white_space(c)) {
        flush();
      } else if (is_bert_punctuation(c)) {
        flush();
        word.push_back(c);
        flush();
      } else {
        word.push_back(c);
      }
    }
    flush();
  }

  std::vector<std::pair<std::int64_t, std::string>> encode_content(std::string_view text) const {
    std::vector<std::pair<std::int64_t, std::string>> out;
    for (auto& raw : split_added(utf8_decode(text, source_), raw_added_, raw_contents_)) {
      if (raw.added_id >= 0) {
        out.emplace_back(raw.added_id, vocab_[static_cast<std::size_t>(raw.added_id)]);
        continue;
      }
      for (auto& p : split_added(normalize32(raw.text), normalized_added_, normalized_contents_)) {
        if (p.added_id >= 0)
          out.emplace_back(p.added_id, vocab_[static_cast<std::size_t>(p.added_id)]);
        else
          pieces_of(p.text, out);
      }
    }
    return out;
  }

  Encoding encode_impl(std::string_view a, const std::string_view* b, bool special, std::size_t max_length) const {
    auto split = [](std::vector<std::pair<std::int64_t, std::string>>&& v, std::vector<std::int64_t>& ids,
                    std::vector<std::string>& toks) {
      for (auto& [id, t] : v) ids.push_back(id), toks.push_back(std::move(t));
    };
    std::vector<std::int64_t> ia, ib;
    std::vector<std::string> ta, tb;
    split(encode_content(a), ia, ta);
    if (b != nullptr) split(encode_content(*b), ib, tb);
    if (max_length > 0) {
      const std::size_t extra = special ? (b != nullptr ? 3 : 2) : 0;
      if (max_length < extra)
        throw InputError(source_ + ": max_length " + std::to_string(max_length) + " leaves no room for the " +
                         std::to_string(extra) + " special tokens");
      truncate_longest_first(ia, ta, b != nullptr ? &ib : nullptr, b != nullptr ? &tb : nullptr, max_length - extra);
    }
    Encoding e;
    if (special) e.push(cls_id_, options_.cls_token, 0, true);
    for (std::size_t k = 0; k < ia.size(); ++k) e.push(ia[k], std::move(ta[k]), 0, false);
    if (special) e.push(sep_id_, options_.sep_token, 0, true);
    if (b != nullptr) {
      for (std::size_t k = 0; k < ib.size(); ++k) e.push(ib[k], std::move(tb[k]), 1, false);
      if (special) e.push(sep_id_, options_.sep_token, 1, true);
    }
    return e;
  }

  static WordPiece from_vocab_txt(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(path.string() + ": cannot open the vocabulary");
    std::vector<std::string> vocab;
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      vocab.push_back(line);
    }
    if (vocab.empty()) throw ConfigError(path.string() + ": the vocabulary is empty");
    WordPieceOptions o;
    const auto cfg_path = path.parent_path() / "tokenizer_config.json";
    if (std::filesystem::exists(cfg_path)) {
      const auto cfg = read_json(cfg_path);
      o.lowercase = cfg.value("do_lower_case", o.lowercase);
      if (cfg.contains("strip_accents") && cfg["strip_accents"].is_boolean()) o.strip_accents = cfg["strip_accents"].get<bool>();
      o.handle_chinese_chars = cfg.value("tokenize_chinese_chars", o.handle_chinese_chars);
      for (auto [key, field] : {std::pair{"unk_token", &o.unk_token}, {"cls_token", &o.cls_token},
                                {"sep_token", &o.sep_token}, {"pad_token", &o.pad_token}})
        if (cfg.contains(key) && cfg[key].is_string()) *field = cfg[key].get<std::string>();
    }
    return WordPiece(std::move(vocab), std::move(o), {}, path.string());
  }

  static nlohmann::json read_json(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(path.string() + ": cannot open");
    try {
      return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(path.string() + ": not valid JSON (" + e.what() + ")");
    }
  }

  static WordPiece from_tokenizer_json(const std::filesystem::path& path) {
    const auto j = read_json(path);
    const std::string src = path.string();
    try {
      const auto& model = j.at("model");
      if (model.value("type", std::string()) != "WordPiece")
        throw ConfigError(src + ": model type \"" + model.value("type", std::string("?")) +
                          "\" is not WordPiece (byte-level BPE files load with peft::text::Bpe)");
      WordPieceOptions o;
      o.unk_token = model.value("unk_token", o.unk_token);
      o.continuing_subword_prefix = model.value("continuing_subword_prefix", o.continuing_subword_prefix);
      o.max_input_chars_per_word = model.value("max_input_chars_per_word", o.max_input_chars_per_word);
      const auto& vocab_json = model.at("vocab");
      std::vector<std::string> vocab(vocab_json.size());
      for (auto it = vocab_json.begin(); it != vocab_json.end(); ++it) {
        const auto id = it.value().get<std::int64_t>();
        if (id < 0 || id >= static_cast<std::int64_t>(vocab.size()))
          throw ConfigError(src + ": vocabulary id " + std::to_string(id) + " of \"" + it.key() +
                            "\" is outside 0.." + std::to_string(vocab.size() - 1));
        vocab[static_cast<std::size_t>(id)] = it.key();
      }
      if (j.contains("normalizer") && !j["normalizer"].is_null()) {
        const auto& n = j["normalizer"];
        if (n.value("type", std::string()) != "BertNormalizer")
          throw ConfigError(src + ": normalizer \"" + n.value("type", std::string("?")) + "\" is not supported (BertNormalizer)");
        o.clean_text = n.value("clean_text", true);
        o.handle_chinese_chars = n.value("handle_chinese_chars", true);
        o.lowercase = n.value("lowercase", true);
        if (n.contains("strip_accents") && n["strip_accents"].is_boolean()) o.strip_accents = n["strip_accents"].get<bool>();
      } else {
        o.clean_text = o.handle_chinese_chars = o.lowercase = false;
        o.strip_accents = false;
      }
      if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null() &&
          j["pre_tokenizer"].value("type", std::string()) != "BertPreTokenizer")
        throw ConfigError(src + ": pre_tokenizer \"" + j["pre_tokenizer"].value("type", std::string("?")) +
                          "\" is not supported (BertPreTokenizer)");
      if (j.contains("post_processor") && !j["post_processor"].is_null()) {
        const auto& p = j["post_processor"];
        const auto type = p.value("type", std::string());
        if (type == "BertProcessing") {
          o.cls_token = p.at("cls").at(0).get<std::string>();
          o.sep_token = p.at("sep").at(0).get<std::string>();
        } else if (type == "TemplateProcessing") {
          const auto& single = p.at("single");
          if (single.size() != 3 || !single[0].contains("SpecialToken") || !single[2].contains("SpecialToken"))
            throw ConfigError(src + ": a TemplateProcessing other than [CLS] $A [SEP] is not supported");
          o.cls_token = single[0]["SpecialToken"].at("id").get<std::string>();
          o.sep_token = single[2]["SpecialToken"].at("id").get<std::string>();
        } else {
          throw ConfigError(src + ": post_processor \"" + type + "\" is not supported");
        }
      }
      if (j.contains("padding") && j["padding"].is_object()) o.pad_token = j["padding"].value("pad_token", o.pad_token);
      std::vector<AddedToken> added;
      if (j.contains("added_tokens"))
        for (const auto& a : j["added_tokens"])
          added.push_back(added_token_from_json(a));
      return WordPiece(std::move(vocab), std::move(o), std::move(added), src);
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(src + ": unexpected tokenizer.json layout (" + e.what() + ")");
    }
  }

  WordPieceOptions options_;
  std::vector<std::string> vocab_;
  std::unordered_map<std::string, std::int64_t> ids_;
  std::vector<AddedToken> raw_added_, normalized_added_;
  std::vector<std::u32string> raw_contents_, normalized_contents_;
  std::string source_;
  std::int64_t unk_id_ = -1, cls_id_ = -1, sep_id_ = -1, pad_id_ = -1;
};

}  // namespace peft::text
