// Tokenised datasets and a batching loader: what every text example and benchmark needs between a file
// of labelled text and a model.
//
//     auto rows  = peft::text::read_labelled_csv("reviews.csv");
//     auto parts = peft::text::split(rows, {3000, 500, 500}, /*seed=*/0);   // train, val, test
//     auto labels = peft::text::LabelSet::from_rows(rows);
//     auto train = peft::text::encode_classification(tok, parts[0], labels, /*max_length=*/64);
//     peft::text::DataLoader loader(train, {/*batch_size=*/32});    // shuffled, seed 0
//     for (int step = 0; step < steps; ++step) {
//       auto b = loader.next();          // endless: a fresh permutation every epoch
//       auto logits = model->forward(b.input_ids, b.attention_mask);
//       ...
//     }
//     for (const auto& b : peft::text::DataLoader(test, {64, /*shuffle=*/false})) ...  // one pass, in order
//
// Rows are padded once to the dataset's longest; a batch is sliced out of the padded tensors and trimmed
// to its own longest row, so padding costs nothing at training time. (LibTorch's data loader collates
// one example at a time into fixed shapes; slicing whole batches is faster and lets each batch be
// trimmed.) Shuffles and splits use a portable generator (std::mt19937_64 with a modulo draw), so the
// same seed gives the same split with any standard library and any LibTorch.
#pragma once

#include <peft/core/error.hpp>
#include <peft/io/safetensors.hpp>
#include <peft/text/corpora.hpp>
#include <peft/text/encoding.hpp>
#include <peft/text/tokenizer.hpp>

#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace peft::text {

/// The label value a loss ignores (PyTorch's cross_entropy default, HF's convention).
constexpr std::int64_t kIgnoreIndex = -100;

/// A seeded permutation of 0..n-1 that is the same everywhere (Fisher-Yates over std::mt19937_64,
/// whose output the standard fixes; std::shuffle and the distributions are implementation-defined).
inline std::vector<std::size_t> permutation(std::size_t n, std::uint64_t seed) {
  std::vector<std::size_t> p(n);
  std::iota(p.begin(), p.end(), std::size_t{0});
  std::mt19937_64 rng(seed);
  for (std::size_t i = n; i > 1; --i) std::swap(p[i - 1], p[static_cast<std::size_t>(rng() % i)]);
  return p;
}

/// Shuffles `rows` with `seed` and cuts consecutive parts of the given sizes (e.g. {train, val, test}).
/// Throws InputError when the sizes add up to more rows than there are.
template <typename T>
std::vector<std::vector<T>> split(const std::vector<T>& rows, const std::vector<std::size_t>& sizes, std::uint64_t seed) {
  const std::size_t want = std::accumulate(sizes.begin(), sizes.end(), std::size_t{0});
  if (want > rows.size())
    throw InputError("split: the parts ask for " + std::to_string(want) + " rows, the data has " + std::to_string(rows.size()));
  const auto p = permutation(rows.size(), seed);
  std::vector<std::vector<T>> out;
  std::size_t at = 0;
  for (const auto n : sizes) {
    std::vector<T> part;
    part.reserve(n);
    for (std::size_t k = 0; k < n; ++k) part.push_back(rows[p[at + k]]);
    out.push_back(std::move(part));
    at += n;
  }
  return out;
}

/// Class names and their indices. from_rows sorts the distinct labels, so a class gets the same index
/// whatever the order of the file.
class LabelSet {
 public:
  LabelSet() = default;
  /// Names in index order; duplicates throw InputError.
  explicit LabelSet(std::vector<std::string> names) : names_(std::move(names)) {
    for (std::size_t i = 0; i < names_.size(); ++i)
      if (!index_.emplace(names_[i], static_cast<std::int64_t>(i)).second)
        throw InputError("LabelSet: the label \"" + names_[i] + "\" is given twice");
  }
  static LabelSet from_rows(const std::vector<LabelledText>& rows) {
    std::vector<std::string> names;
    for (const auto& r : rows) names.push_back(r.label);
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    return LabelSet(std::move(names));
  }
  std::int64_t index(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) {
      std::string known;
      for (std::size_t i = 0; i < names_.size() && i < 8; ++i) known += (i ? ", " : "") + names_[i];
      throw InputError("label \"" + name + "\" is not one of the " + std::to_string(names_.size()) + " known labels (" + known +
                       (names_.size() > 8 ? ", ..." : "") + ")");
    }
    return it->second;
  }
  const std::string& name(std::int64_t i) const { return names_.at(static_cast<std::size_t>(i)); }
  std::size_t size() const { return names_.size(); }
  const std::vector<std::string>& names() const { return names_; }

 private:
  std::vector<std::string> names_;
  std::map<std::string, std::int64_t> index_;
};

/// A batch: [B, T] int64 tensors trimmed to the batch's longest row, and labels [B] (classes) or [B, T]
/// (per-token labels, kIgnoreIndex where no loss is taken).
struct TextBatch {
  torch::Tensor input_ids, attention_mask, token_type_ids, labels;
  std::int64_t size() const { return input_ids.size(0); }
  TextBatch to(const torch::Device& device) const {
    return {input_ids.to(device), attention_mask.to(device), token_type_ids.to(device), labels.to(device)};
  }
};

/// Tokenised rows padded to the longest: input_ids, attention_mask, token_type_ids [N, T]; labels [N] or
/// [N, T]; label_names for classification (empty otherwise).
struct TextDataset {
  torch::Tensor input_ids, attention_mask, token_type_ids, labels;
  std::vector<std::string> label_names;

  std::int64_t size() const { return input_ids.defined() ? input_ids.size(0) : 0; }
  /// Tokens that are not padding.
  std::int64_t tokens() const { return attention_mask.defined() ? attention_mask.sum().item<std::int64_t>() : 0; }

  /// The rows `rows` (int64 [K]) trimmed to their longest, as a batch.
  TextBatch batch(const torch::Tensor& rows, bool trim = true) const {
    auto mask = attention_mask.index_select(0, rows);
    std::int64_t t = mask.size(1);
    if (trim && t > 0) t = std::max<std::int64_t>(1, mask.sum(1).max().item<std::int64_t>());
    auto cut = [&](const torch::Tensor& x) { return x.index_select(0, rows).narrow(1, 0, t); };
    auto y = labels.index_select(0, rows);
    if (y.dim() == 2) y = y.narrow(1, 0, t);
    return {cut(input_ids), mask.narrow(1, 0, t), cut(token_type_ids), y};
  }
  /// Rows `rows` as a dataset (padding kept).
  TextDataset subset(const torch::Tensor& rows) const {
    return {input_ids.index_select(0, rows), attention_mask.index_select(0, rows), token_type_ids.index_select(0, rows),
            labels.index_select(0, rows), label_names};
  }

  /// Saves to a safetensors file (written atomically; label names in the metadata).
  void save(const std::filesystem::path& path, const std::map<std::string, std::string>& extra_metadata = {}) const {
    torch::OrderedDict<std::string, torch::Tensor> t;
    t.insert("input_ids", input_ids), t.insert("attention_mask", attention_mask), t.insert("token_type_ids", token_type_ids);
    t.insert("labels", labels);
    auto meta = extra_metadata;
    meta["format"] = "peft-cpp text dataset";
    meta["label_names"] = nlohmann::json(label_names).dump();
    save_safetensors(path.string(), t, meta);
  }
  /// Loads what save wrote; a file that is not one throws FormatError naming it.
  static TextDataset load(const std::filesystem::path& path) {
    auto c = load_safetensors(path.string());
    TextDataset d;
    auto get = [&](const char* name) {
      if (!c.tensors.contains(name)) throw FormatError(path.string() + ": not a text dataset (no tensor '" + name + "')");
      return c.tensors[name];
    };
    d.input_ids = get("input_ids"), d.attention_mask = get("attention_mask"), d.token_type_ids = get("token_type_ids");
    d.labels = get("labels");
    const auto n = d.input_ids.size(0);
    for (const auto* x : {&d.attention_mask, &d.token_type_ids})
      if (x->sizes() != d.input_ids.sizes()) throw FormatError(path.string() + ": tensor shapes disagree");
    if (d.labels.dim() < 1 || d.labels.size(0) != n) throw FormatError(path.string() + ": labels have the wrong number of rows");
    if (const auto it = c.metadata.find("label_names"); it != c.metadata.end()) {
      try {
        d.label_names = nlohmann::json::parse(it->second).get<std::vector<std::string>>();
      } catch (const nlohmann::json::exception& e) {
        throw FormatError(path.string() + ": metadata label_names is not a JSON list of strings (" + e.what() + ")");
      }
    }
    return d;
  }
};

namespace detail {
inline TextDataset pad_dataset(const std::vector<Encoding>& encs, std::int64_t pad_id, torch::Tensor labels,
                               std::vector<std::string> label_names) {
  auto b = pad_batch(encs, pad_id);
  return {b.input_ids, b.attention_mask, b.token_type_ids, std::move(labels), std::move(label_names)};
}
}  // namespace detail

/// Sentence (or sentence-pair) classification: each text, or text and pair when the pair is not empty,
/// with the tokenizer's special tokens, truncated to max_length tokens (0: no limit; pairs longest
/// first), its label's index in `labels`.
inline TextDataset encode_classification(const Tokenizer& tok, const std::vector<LabelledText>& rows, const LabelSet& labels,
                                         std::size_t max_length) {
  std::vector<Encoding> encs;
  std::vector<std::int64_t> y;
  encs.reserve(rows.size());
  y.reserve(rows.size());
  for (const auto& r : rows) {
    y.push_back(labels.index(r.label));
    encs.push_back(r.pair.empty() ? tok.encode(r.text, true, max_length) : tok.encode_pair(r.text, r.pair, true, max_length));
  }
  return detail::pad_dataset(encs, tok.pad_id(), torch::tensor(y, torch::kLong), labels.names());
}

/// Causal language modelling: each text tokenised (with the tokenizer's special tokens, then `eos_id`
/// appended when it is >= 0), truncated to max_length, labels equal to the ids and kIgnoreIndex on
/// padding. The model's loss shifts them (position t predicts label t + 1).
inline TextDataset encode_causal_lm(const Tokenizer& tok, const std::vector<std::string>& texts, std::size_t max_length,
                                    std::int64_t eos_id = -1) {
  if (eos_id >= 0 && max_length == 1) throw InputError("encode_causal_lm: max_length 1 leaves no room for a text before eos");
  std::vector<Encoding> encs;
  encs.reserve(texts.size());
  for (const auto& s : texts) {
    auto e = tok.encode(s, true, max_length == 0 ? 0 : (eos_id >= 0 ? max_length - 1 : max_length));
    if (eos_id >= 0) e.push(eos_id, "", 0, true);
    encs.push_back(std::move(e));
  }
  auto d = detail::pad_dataset(encs, tok.pad_id(), {}, {});
  d.labels = d.input_ids.masked_fill(d.attention_mask.eq(0), kIgnoreIndex);
  return d;
}

/// The dataset in `file` when it was made with the same `key` (kept in its metadata), otherwise
/// make() saved there first. A damaged or foreign file is rebuilt, never half-read.
inline TextDataset cached(const std::filesystem::path& file, const std::string& key, const std::function<TextDataset()>& make) {
  if (std::filesystem::exists(file)) {
    try {
      SafetensorsFile f(file.string());
      const auto it = f.metadata().find("cache_key");
      if (it != f.metadata().end() && it->second == key) return TextDataset::load(file);
    } catch (const Error&) {  // rebuilt below
    }
  }
  auto d = make();
  std::filesystem::create_directories(file.parent_path());
  d.save(file, {{"cache_key", key}});
  return d;
}

/// Batches of a TextDataset. next() is endless (a fresh seeded permutation each epoch, for step-based
/// training); range-for walks one epoch (in row order when shuffle is off: evaluation).
class DataLoader {
 public:
  struct Options {
    std::int64_t batch_size = 32;
    bool shuffle = true;
    bool drop_last = false;  ///< drop an epoch's last, smaller batch
    bool trim = true;        ///< cut each batch's padding to its longest row
    std::uint64_t seed = 0;
    /// With shuffle: rows of similar length share a batch (HF's group_by_length): the shuffled rows are
    /// cut into windows of 50 batches, sorted by length inside each, batched, and the full batches
    /// shuffled. Trimmed batches then carry little padding, which cuts the cost of a step.
    bool group_by_length = false;
  };

  DataLoader(TextDataset data, Options o) : data_(std::move(data)), o_(o) {
    if (o_.batch_size <= 0) throw InputError("DataLoader: batch_size must be positive, received " + std::to_string(o_.batch_size));
    if (data_.size() == 0) throw InputError("DataLoader: the dataset is empty");
    if (o_.drop_last && data_.size() < o_.batch_size)
      throw InputError("DataLoader: drop_last with " + std::to_string(data_.size()) + " rows and batch_size " +
                       std::to_string(o_.batch_size) + " yields no batch");
    if (o_.group_by_length) {
      const auto len = data_.attention_mask.sum(1).contiguous();
      lengths_.assign(len.data_ptr<std::int64_t>(), len.data_ptr<std::int64_t>() + len.numel());
    }
  }

  const TextDataset& dataset() const { return data_; }
  const Options& options() const { return o_; }
  /// Batches in one epoch.
  std::int64_t batches_per_epoch() const {
    const auto n = data_.size(), b = o_.batch_size;
    return o_.drop_last ? n / b : (n + b - 1) / b;
  }
  /// Epochs begun by next() so far.
  std::int64_t epoch() const { return epoch_; }

  /// The next batch of the endless stream.
  TextBatch next() {
    if (order_.empty() || at_ >= batches_per_epoch()) start_epoch();
    return batch_of(order_, at_++);
  }

  class Iterator {
   public:
    Iterator(const DataLoader* l, std::vector<std::int64_t> order, std::int64_t i) : l_(l), order_(std::move(order)), i_(i) {}
    TextBatch operator*() const { return l_->batch_of(order_, i_); }
    Iterator& operator++() { return ++i_, *this; }
    bool operator!=(const Iterator& o) const { return i_ != o.i_; }

   private:
    const DataLoader* l_;
    std::vector<std::int64_t> order_;
    std::int64_t i_;
  };
  /// One epoch. With shuffle, each range-for draws the next permutation of its own sequence (seed + 1, + 2, ...).
  Iterator begin() const { return {this, epoch_order(o_.seed ^ 0x9e3779b97f4a7c15ULL, passes_++), 0}; }
  Iterator end() const { return {this, {}, batches_per_epoch()}; }

 private:
  std::vector<std::int64_t> epoch_order(std::uint64_t stream, std::int64_t e) const {
    std::vector<std::int64_t> order(static_cast<std::size_t>(data_.size()));
    if (!o_.shuffle) {
      std::iota(order.begin(), order.end(), std::int64_t{0});
    } else {
      const auto seed = stream + static_cast<std::uint64_t>(e) * 0x100000001b3ULL;
      const auto p = permutation(order.size(), seed);
      for (std::size_t i = 0; i < p.size(); ++i) order[i] = static_cast<std::int64_t>(p[i]);
      if (o_.group_by_length) group_by_length(order, seed ^ 0x5bd1e995ULL);
    }
    return order;
  }
  /// Sorts windows of 50 batches by row length (longest first) and shuffles the full batches' order;
  /// a last, smaller batch stays last.
  void group_by_length(std::vector<std::int64_t>& order, std::uint64_t seed) const {
    const auto b = static_cast<std::size_t>(o_.batch_size), window = 50 * b;
    for (std::size_t at = 0; at < order.size(); at += window) {
      const auto end = order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), at + window));
      std::stable_sort(order.begin() + static_cast<std::ptrdiff_t>(at), end, [&](std::int64_t x, std::int64_t y) {
        return lengths_[static_cast<std::size_t>(x)] > lengths_[static_cast<std::size_t>(y)];
      });
    }
    const std::size_t full = order.size() / b;
    const auto p = permutation(full, seed);
    std::vector<std::int64_t> out;
    out.reserve(order.size());
    for (const auto k : p) out.insert(out.end(), order.begin() + static_cast<std::ptrdiff_t>(k * b), order.begin() + static_cast<std::ptrdiff_t>((k + 1) * b));
    out.insert(out.end(), order.begin() + static_cast<std::ptrdiff_t>(full * b), order.end());
    order = std::move(out);
  }
  void start_epoch() {
    order_ = epoch_order(o_.seed, epoch_++);
    at_ = 0;
  }
  TextBatch batch_of(const std::vector<std::int64_t>& order, std::int64_t i) const {
    const auto n = static_cast<std::int64_t>(order.size());
    const auto begin = i * o_.batch_size, count = std::min(o_.batch_size, n - begin);
    auto rows = torch::from_blob(const_cast<std::int64_t*>(order.data()) + begin, {count}, torch::kLong).clone();
    return data_.batch(rows, o_.trim);
  }

  TextDataset data_;
  Options o_;
  std::vector<std::int64_t> order_;
  std::vector<std::int64_t> lengths_;  // tokens per row, for group_by_length
  std::int64_t at_ = 0, epoch_ = 0;
  mutable std::int64_t passes_ = 0;
};

}  // namespace peft::text
