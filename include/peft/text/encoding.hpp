// What the tokenizers share: an Encoding (ids, type ids, mask, tokens), added tokens matched in the raw
// text, pair truncation, and padding a batch into tensors a model takes.
#pragma once

#include <peft/core/error.hpp>
#include <peft/text/unicode.hpp>

#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace peft::text {

/// One tokenised text (or pair): parallel vectors, one entry per token.
struct Encoding {
  std::vector<std::int64_t> ids;
  std::vector<std::int64_t> type_ids;        ///< 0 for the first text, 1 for the second of a pair
  std::vector<std::string> tokens;           ///< the vocabulary strings of `ids`
  std::vector<std::uint8_t> special_tokens;  ///< 1 where the post-processor added a special token
  std::size_t size() const { return ids.size(); }

  void push(std::int64_t id, std::string token, std::int64_t type_id, bool special) {
    ids.push_back(id);
    tokens.push_back(std::move(token));
    type_ids.push_back(type_id);
    special_tokens.push_back(special ? 1 : 0);
  }
};

/// A padded batch, [B, T] int64 each. attention_mask is 1 on tokens and 0 on padding.
struct Batch {
  torch::Tensor input_ids;
  torch::Tensor attention_mask;
  torch::Tensor token_type_ids;
};

/// Pads encodings to the longest (or to `pad_to`, when larger) on the right with `pad_id`.
inline Batch pad_batch(const std::vector<Encoding>& encodings, std::int64_t pad_id, std::int64_t pad_to = 0) {
  std::int64_t t = pad_to;
  for (const auto& e : encodings) t = std::max<std::int64_t>(t, static_cast<std::int64_t>(e.size()));
  const auto b = static_cast<std::int64_t>(encodings.size());
  auto ids = torch::full({b, t}, pad_id, torch::kLong);
  auto mask = torch::zeros({b, t}, torch::kLong);
  auto types = torch::zeros({b, t}, torch::kLong);
  auto* pi = ids.data_ptr<std::int64_t>();
  auto* pm = mask.data_ptr<std::int64_t>();
  auto* pt = types.data_ptr<std::int64_t>();
  for (std::int64_t r = 0; r < b; ++r) {
    const auto& e = encodings[static_cast<std::size_t>(r)];
    for (std::size_t k = 0; k < e.size(); ++k) {
      pi[r * t + static_cast<std::int64_t>(k)] = e.ids[k];
      pm[r * t + static_cast<std::int64_t>(k)] = 1;
      pt[r * t + static_cast<std::int64_t>(k)] = e.type_ids[k];
    }
  }
  return {ids, mask, types};
}

/// Truncation of a text or a pair to at most `budget` content tokens, as HF tokenizers' "longest_first":
/// a text is cut at the end; in a pair the longer is cut to leave the shorter whole when the shorter
/// fits in half the budget, otherwise the shorter gets budget / 2 and the longer the rest (the second of
/// two equal ones counts as the longer).
inline void truncate_longest_first(std::vector<std::int64_t>& a, std::vector<std::string>& ta,
                                   std::vector<std::int64_t>* b, std::vector<std::string>* tb, std::size_t budget) {
  if (b == nullptr) {
    if (a.size() > budget) a.resize(budget), ta.resize(budget);
    return;
  }
  if (a.size() + b->size() <= budget) return;
  const bool swap = a.size() > b->size();
  std::size_t shorter = swap ? b->size() : a.size(), longer;
  longer = shorter > budget ? shorter : std::max(shorter, budget - shorter);
  if (shorter + longer > budget) {
    shorter = budget / 2;
    longer = shorter + budget % 2;
  }
  const std::size_t na = swap ? longer : shorter, nb = swap ? shorter : longer;
  a.resize(std::min(a.size(), na)), ta.resize(a.size());
  b->resize(std::min(b->size(), nb)), tb->resize(b->size());
}

/// A token of the added vocabulary (tokenizer.json's "added_tokens"): matched in the text before the
/// model sees it, so "[MASK]" in a sentence is one token.
struct AddedToken {
  std::string content;
  std::int64_t id = -1;
  bool special = false;
  bool normalized = false;   ///< matched in the normalised text rather than the raw text
  bool lstrip = false;       ///< swallows whitespace on its left
  bool rstrip = false;       ///< swallows whitespace on its right
  bool single_word = false;  ///< only where it is not inside a word
};

/// One entry of tokenizer.json's "added_tokens".
template <class Json>
AddedToken added_token_from_json(const Json& a) {
  return {a.at("content").template get<std::string>(), a.at("id").template get<std::int64_t>(), a.value("special", false),
          a.value("normalized", false), a.value("lstrip", false), a.value("rstrip", false), a.value("single_word", false)};
}

/// A piece of text after splitting on added tokens: either an added token's id or plain text.
struct Piece {
  std::u32string text;
  std::int64_t added_id = -1;  ///< >= 0: this piece is the added token with that id
};

namespace detail {
inline bool word_char(char32_t c) { return is_letter(c) || is_number(c) || is_mark(c) || c == U'_'; }
}  // namespace detail

/// Splits `text` on the given added tokens: leftmost, and the longest of those starting there.
inline std::vector<Piece> split_added(const std::u32string& text, const std::vector<AddedToken>& tokens,
                                      const std::vector<std::u32string>& contents) {
  std::vector<Piece> out;
  if (tokens.empty()) {
    out.push_back({text, -1});
    return out;
  }
  std::size_t plain_from = 0, i = 0;
  while (i < text.size()) {
    std::size_t best = tokens.size(), best_len = 0;
    for (std::size_t k = 0; k < tokens.size(); ++k) {
      const auto& c = contents[k];
      if (c.empty() || c.size() <= best_len || text.compare(i, c.size(), c) != 0) continue;
      if (tokens[k].single_word) {
        const bool left_ok = i == 0 || !detail::word_char(text[i - 1]);
        const bool right_ok = i + c.size() >= text.size() || !detail::word_char(text[i + c.size()]);
        if (!left_ok || !right_ok) continue;
      }
      best = k, best_len = c.size();
    }
    if (best == tokens.size()) {
      ++i;
      continue;
    }
    std::size_t start = i, stop = i + best_len;
    if (tokens[best].lstrip)
      while (start > plain_from && is_white_space(text[start - 1])) --start;
    if (tokens[best].rstrip)
      while (stop < text.size() && is_white_space(text[stop])) ++stop;
    if (start > plain_from) out.push_back({text.substr(plain_from, start - plain_from), -1});
    out.push_back({text.substr(i, best_len), tokens[best].id});
    plain_from = i = stop;
  }
  if (plain_from < text.size()) out.push_back({text.substr(plain_from), -1});
  return out;
}

}  // namespace peft::text
