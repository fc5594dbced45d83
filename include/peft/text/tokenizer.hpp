// One type for any supported tokenizer file: WordPiece (BERT family) or byte-level BPE (GPT-2, LLaMA-3,
// SmolLM2), chosen from the file itself.
//
//     auto tok = peft::text::Tokenizer::from_file(dir);        // tokenizer.json, or a BERT vocab.txt
//     auto batch = tok.encode_batch(texts, /*max_length=*/128); // input_ids, attention_mask, token_type_ids
#pragma once

#include <peft/core/error.hpp>
#include <peft/text/bpe.hpp>
#include <peft/text/encoding.hpp>
#include <peft/text/wordpiece.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <variant>
#include <vector>

namespace peft::text {

class Tokenizer {
 public:
  Tokenizer(WordPiece w) : impl_(std::move(w)) {}  // NOLINT: implicit by design
  Tokenizer(Bpe b) : impl_(std::move(b)) {}        // NOLINT

  /// A tokenizer.json (model WordPiece or BPE), a vocab.txt, or a folder holding either.
  static Tokenizer from_file(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    if (fs::is_directory(path)) {
      if (fs::exists(path / "tokenizer.json")) return from_file(path / "tokenizer.json");
      if (fs::exists(path / "vocab.txt")) return WordPiece::from_file(path / "vocab.txt");
      throw IoError(path.string() + ": no tokenizer.json or vocab.txt in this folder");
    }
    if (path.extension() != ".json") return WordPiece::from_file(path);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(path.string() + ": cannot open the tokenizer");
    std::string type;
    try {
      type = nlohmann::json::parse(in).at("model").value("type", std::string());
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(path.string() + ": not a tokenizer.json (" + e.what() + ")");
    }
    if (type == "WordPiece") return WordPiece::from_file(path);
    if (type == "BPE") return Bpe::from_file(path);
    throw ConfigError(path.string() + ": tokenizer model \"" + type + "\" is not supported (WordPiece, byte-level BPE)");
  }

  Encoding encode(std::string_view text, bool add_special_tokens = true, std::size_t max_length = 0) const {
    return std::visit([&](const auto& t) { return t.encode(text, add_special_tokens, max_length); }, impl_);
  }
  Encoding encode_pair(std::string_view a, std::string_view b, bool add_special_tokens = true,
                       std::size_t max_length = 0) const {
    return std::visit([&](const auto& t) { return t.encode_pair(a, b, add_special_tokens, max_length); }, impl_);
  }
  /// Texts padded on the right with pad_id() into [B, T] tensors (each truncated to max_length; 0: none).
  Batch encode_batch(const std::vector<std::string>& texts, std::size_t max_length = 0) const {
    std::vector<Encoding> encs;
    encs.reserve(texts.size());
    for (const auto& t : texts) encs.push_back(encode(t, true, max_length));
    return pad_batch(encs, pad_id());
  }
  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens = true) const {
    return std::visit([&](const auto& t) { return t.decode(ids, skip_special_tokens); }, impl_);
  }
  std::int64_t token_to_id(std::string_view token) const {
    return std::visit([&](const auto& t) { return t.token_to_id(token); }, impl_);
  }
  std::size_t vocab_size() const {
    return std::visit([](const auto& t) { return t.vocab_size(); }, impl_);
  }
  /// The padding id: the file's (or [PAD]); for a BPE file that names none, 0.
  std::int64_t pad_id() const {
    return std::max<std::int64_t>(std::visit([](const auto& t) { return t.pad_id(); }, impl_), 0);
  }
  const WordPiece* wordpiece() const { return std::get_if<WordPiece>(&impl_); }
  const Bpe* bpe() const { return std::get_if<Bpe>(&impl_); }

 private:
  std::variant<WordPiece, Bpe> impl_;
};

}  // namespace peft::text
