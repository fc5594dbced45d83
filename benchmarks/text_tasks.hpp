#pragma once
/// \file text_tasks.hpp
/// The benchmarks' text tasks on MiniLM (text_bench, subspace_bench): real labelled text from Debian
/// packages (scripts/fetch_data.sh), fixed splits, tokenised once and cached.

#include <peft/peft.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace text_tasks {

namespace fs = std::filesystem;
namespace M = peft::models;
namespace T = peft::text;

using Model = M::BertForSequenceClassificationImpl;

// ---- tasks -----------------------------------------------------------------------------------------

struct TaskSpec {
  std::string name, description, source;
  bool pair = false;
  std::size_t train = 0, val = 0, test = 0;
  bool in_text_bench = true;  // text_bench's four; the others serve subspace_bench
};

inline const std::vector<TaskSpec>& task_specs() {
  static const std::vector<TaskSpec> specs = {
      {"polarity", "movie-review sentences, positive or negative (Pang & Lee; Debian python3-pattern)",
       "corpora/polarity-en-pang&lee2.csv", false, 1000, 200, 600},
      {"uncertainty", "biomedical sentences, certain or uncertain (CoNLL-2010; Debian python3-pattern)",
       "corpora/uncertainty-conll2010.csv", false, 1000, 200, 600},
      {"wordnet", "a WordNet definition's lexicographer category, 45 classes (Debian wordnet-base)", "wordnet", false, 2000, 300,
       600},
      {"gloss_match", "pairs (word, definition): does the definition belong to the word, or to another synset of the same "
                      "category? (Debian wordnet-base)",
       "wordnet", true, 1000, 200, 600},
      {"reviews", "full movie reviews (their opening tokens), positive or negative (Pang & Lee; Debian python3-pattern)",
       "corpora/polarity-en-pang&lee1.csv", false, 800, 200, 500, false},
  };
  return specs;
}

/// text_bench's tasks, or every task.
inline std::vector<std::string> task_names(bool all = false) {
  std::vector<std::string> n;
  for (const auto& t : task_specs())
    if (all || t.in_text_bench) n.push_back(t.name);
  return n;
}

inline const TaskSpec& task_spec(const std::string& name) {
  for (const auto& t : task_specs())
    if (t.name == name) return t;
  throw std::invalid_argument("unknown task " + name);
}

/// Every candidate row of a task, in a fixed order.
inline std::vector<T::LabelledText> task_rows(const TaskSpec& t, const fs::path& data) {
  if (t.source != "wordnet") return T::read_labelled_csv(data / t.source);
  const auto synsets = T::read_wordnet_synsets(data / "wordnet");
  std::vector<T::LabelledText> rows;
  if (t.name == "wordnet") {
    for (const auto& s : synsets) rows.push_back({s.lexname, s.definition()});
    return rows;
  }
  // gloss_match: one pair per synset, alternately its own definition ("match") and the definition of a
  // random other synset of the same category that does not hold the word ("other").
  std::map<std::string, std::vector<std::size_t>> by_category;
  for (std::size_t i = 0; i < synsets.size(); ++i) by_category[synsets[i].lexname].push_back(i);
  std::mt19937_64 rng(4242);
  for (std::size_t i = 0; i < synsets.size(); ++i) {
    const auto& s = synsets[i];
    if (s.words.empty()) continue;
    const auto& word = s.words[static_cast<std::size_t>(rng() % s.words.size())];
    if (i % 2 == 0) {
      rows.push_back({"match", word, s.definition()});
      continue;
    }
    const auto& same = by_category[s.lexname];
    for (int attempt = 0; attempt < 16; ++attempt) {
      const auto& o = synsets[same[static_cast<std::size_t>(rng() % same.size())]];
      if (std::find(o.words.begin(), o.words.end(), word) != o.words.end()) continue;
      rows.push_back({"other", word, o.definition()});
      break;
    }
  }
  return rows;
}

struct Task {
  TaskSpec spec;
  T::LabelSet labels;
  T::TextDataset train, val, test;
  std::vector<std::size_t> rows[3];  // the source rows of each split
};

/// 64-bit FNV-1a of a file's bytes (the tokenizer's identity in the cache key).
inline uint64_t file_hash(const fs::path& p) {
  const auto s = T::read_text_file(p);
  uint64_t h = 1469598103934665603ULL;
  for (const unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

inline Task make_task(const TaskSpec& spec, const T::Tokenizer& tok, const fs::path& tokenizer_file, const fs::path& data,
               std::size_t max_length, uint64_t split_seed) {
  Task t;
  t.spec = spec;
  const auto rows = task_rows(spec, data);
  t.labels = T::LabelSet::from_rows(rows);
  const std::size_t want = spec.train + spec.val + spec.test;
  if (want > rows.size())
    throw peft::InputError(spec.name + ": the split asks for " + std::to_string(want) + " rows, " + spec.source + " has " +
                           std::to_string(rows.size()));
  const auto perm = T::permutation(rows.size(), split_seed);
  const std::size_t sizes[3] = {spec.train, spec.val, spec.test};
  const char* part_names[3] = {"train", "val", "test"};
  std::size_t at = 0;
  const std::string key = fmt::format("{}|{}|{}|{}|{}|{}|{}|{:x}", spec.name, rows.size(), spec.train, spec.val, spec.test,
                                      max_length, split_seed, file_hash(tokenizer_file));
  for (int k = 0; k < 3; ++k) {
    std::vector<T::LabelledText> part;
    for (std::size_t i = 0; i < sizes[k]; ++i) {
      t.rows[k].push_back(perm[at + i]);
      part.push_back(rows[perm[at + i]]);
    }
    at += sizes[k];
    const auto file = T::data_dir() / "text_bench" /
                      fmt::format("{}-{}-{}-{}-{}-L{}.safetensors", spec.name, spec.train, spec.val, spec.test, max_length, part_names[k]);
    auto d = T::cached(file, key, [&] { return T::encode_classification(tok, part, t.labels, max_length); });
    (k == 0 ? t.train : k == 1 ? t.val : t.test) = std::move(d);
  }
  return t;
}

struct Eval {
  double accuracy = 0, loss = 0;
};

/// Accuracy and mean loss over a dataset, in order, without gradients. `classes` > 0 reads only the
/// first `classes` logits (a head wider than the task: one model serving tasks of several sizes).
inline Eval evaluate(Model& model, const T::TextDataset& d, int64_t batch, int64_t classes = 0) {
  torch::NoGradGuard g;
  const bool was = model.is_training();
  model.eval();
  int64_t right = 0;
  double loss = 0;
  T::DataLoader::Options o;
  o.batch_size = batch, o.shuffle = false;
  for (const auto& b : T::DataLoader(d, o)) {
    auto logits = model.forward(b.input_ids, b.attention_mask, b.token_type_ids);
    if (classes > 0) logits = logits.narrow(1, 0, classes);
    right += logits.argmax(1).eq(b.labels).sum().item<int64_t>();
    loss += torch::nn::functional::cross_entropy(logits, b.labels).item<double>() * static_cast<double>(b.size());
  }
  if (was) model.train();
  return {static_cast<double>(right) / static_cast<double>(d.size()), loss / static_cast<double>(d.size())};
}

inline M::BertForSequenceClassification fresh_model(const M::BertConfig& base, const fs::path& model_dir, int64_t num_labels) {
  auto c = base;
  c.num_labels = num_labels;
  M::BertForSequenceClassification model(c);
  peft::load_pretrained(model, model_dir.string(), peft::LoadOptions().strict(false));
  return model;
}

}  // namespace text_tasks
