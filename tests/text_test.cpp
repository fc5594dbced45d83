// Text: Unicode, CSV, and the tokenizers (MiniLM's WordPiece, SmolLM2's byte-level BPE) token for token
// against Hugging Face tokenizers (tests/fixtures/text/*.json, made by scripts/python/
// make_tokenizer_expectations.py) on an adversarial list and on every text of seven real corpora; MiniLM's
// hidden states against transformers'. The real files come from scripts/fetch_data.sh; skipped without them.
#include <peft/peft.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

// Everything below lives in this file's own namespace, so that the test sources can be compiled
// together (CMake's unity build) without their helpers meeting.
namespace peft_tests_text {

namespace {

namespace fs = std::filesystem;
using peft::text::WordPiece;

std::string ids_line(const std::vector<std::int64_t>& ids) {
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "\n";
}

std::uint64_t fnv1a(const std::string& s, std::uint64_t h) {
  for (unsigned char c : s) h = (h ^ c) * 0x100000001B3ULL;
  return h;
}

}  // namespace

TEST_CASE("UTF-8 decoding is strict and names the offset", "[text]") {
  using peft::text::utf8_decode;
  CHECK(utf8_decode("a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x8D\x95") == std::u32string{U'a', 0xE9, 0x20AC, 0x1F355});
  CHECK(peft::text::utf8_encode(utf8_decode("h\xC3\xA9llo \xF0\x9F\x8D\x95")) == "h\xC3\xA9llo \xF0\x9F\x8D\x95");
  for (const char* bad : {"\x80", "a\xC3", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE2\x82x", "\xFF"}) {
    INFO(bad);
    CHECK_THROWS_AS(utf8_decode(bad, "t.csv"), peft::InputError);
  }
  CHECK_THROWS_WITH(utf8_decode("ok\x80", "t.csv"), Catch::Contains("t.csv") && Catch::Contains("byte 2"));
}

TEST_CASE("Unicode tables: categories, NFD with canonical order, lowercase", "[text]") {
  using namespace peft::text;
  CHECK(category(U'A') == Category::Lu);
  CHECK(category(0x301) == Category::Mn);
  CHECK(category(0x4E2D) == Category::Lo);
  CHECK(category(0x1F600) == Category::So);
  CHECK(category(0xE0000) == Category::Cn);  // unassigned
  CHECK(category(0x10FFFF) == Category::Cn);
  CHECK(is_punctuation(U'\u00BF'));
  CHECK(nfd(U"\u00E9") == U"e\u0301");
  CHECK(nfd(U"\uD55C") == U"\u1112\u1161\u11AB");           // Hangul, algorithmic
  CHECK(nfd(U"a\u0301\u0323") == U"a\u0323\u0301");          // ccc 220 before 230
  CHECK(nfd(U"\u1E69") == U"s\u0323\u0307");                 // recursive decomposition
  CHECK(lower(U"\u0130") == U"i\u0307");                     // full mapping: two code points
  CHECK(lower(U"\u03A3\u0391\u0392") == U"\u03C3\u03B1\u03B2");  // no final-sigma context
}

TEST_CASE("CSV: quotes, doubled quotes, newlines inside quotes, BOM, CRLF, and bad input is refused", "[text]") {
  using peft::text::parse_csv;
  const auto rows = parse_csv("\xEF\xBB\xBF\"1\",\"a, \"\"b\"\"\nc\"\r\n-1,plain\n\n\"2\",\"\"\n", "x.csv");
  REQUIRE(rows.size() == 3);
  CHECK(rows[0] == std::vector<std::string>{"1", "a, \"b\"\nc"});
  CHECK(rows[1] == std::vector<std::string>{"-1", "plain"});
  CHECK(rows[2] == std::vector<std::string>{"2", ""});
  CHECK(parse_csv("a,b").size() == 1);
  CHECK_THROWS_AS(parse_csv("\"open\nnever closed", "x.csv"), peft::InputError);
  const auto dir = fs::temp_directory_path() / "peft_text_csv";
  fs::create_directories(dir);
  std::ofstream(dir / "short.csv") << "1,ok\n2\n";
  CHECK_THROWS_WITH(peft::text::read_labelled_csv(dir / "short.csv"), Catch::Contains("short.csv") && Catch::Contains("row 2"));
  std::ofstream(dir / "latin1.csv") << "1,caf\xE9\n";
  CHECK_THROWS_WITH(peft::text::read_labelled_csv(dir / "latin1.csv"), Catch::Contains("latin1.csv row 1"));
  fs::remove_all(dir);
}

namespace {

struct Subject {
  const char* fixture;  // under tests/fixtures/text
  const char* model;    // under the data dir
  std::vector<const char*> files;
};
const Subject kSubjects[] = {{"wordpiece_minilm.json", "minilm", {"tokenizer.json", "vocab.txt"}},
                             {"bpe_smollm2.json", "smollm2", {"tokenizer.json"}}};

/// What transformers gave: <stem>.json (inputs) and <stem>.safetensors (outputs) in tests/fixtures/text.
std::pair<nlohmann::json, torch::OrderedDict<std::string, torch::Tensor>> reference(const std::string& stem) {
  const auto dir = fs::path(PEFT_FIXTURES_DIR) / "text";
  std::ifstream in(dir / (stem + ".json"));
  REQUIRE(in);
  return {nlohmann::json::parse(in), peft::load_safetensors((dir / (stem + ".safetensors")).string()).tensors};
}

nlohmann::json fixture_json(const char* name) {
  std::ifstream in(fs::path(PEFT_FIXTURES_DIR) / "text" / name);
  REQUIRE(in);
  return nlohmann::json::parse(in);
}

}  // namespace

// One case per tokenizer, each skipped whole where its files were not fetched (a single case for both
// once skipped one tokenizer, checked the other, and read as skipped even when that one failed).

/// Skips the running case unless the subject's tokenizer was fetched (scripts/fetch_data.sh).
#define PEFT_NEEDS_TOKENIZER(subject)                                                                     \
  if (!fs::exists(peft::text::data_dir() / (subject).model / "tokenizer.json"))                          \
  PEFT_SKIP("no " << (subject).model << " tokenizer in " << peft::text::data_dir() << " (scripts/fetch_data.sh)")

void adversarial_list(const Subject& subject) {
  PEFT_NEEDS_TOKENIZER(subject);
  const auto dir = peft::text::data_dir() / subject.model;
  const auto want = fixture_json(subject.fixture);
  for (const char* file : subject.files) {
    const auto tok = peft::text::Tokenizer::from_file(dir / file);
    CHECK((tok.wordpiece() != nullptr) == (std::string(subject.model) == "minilm"));
    for (const auto& c : want["cases"]) {
      const auto text = c["text"].get<std::string>();
      const std::size_t max_length = c.value("max_length", 0);
      INFO(subject.model << "/" << file << ": \"" << text << "\""
                         << (c.contains("pair") ? " + \"" + c["pair"].get<std::string>() + "\"" : "") << " max_length "
                         << max_length);
      const auto e = c.contains("pair") ? tok.encode_pair(text, c["pair"].get<std::string>(), true, max_length)
                                        : tok.encode(text, true, max_length);
      CHECK(e.ids == c["ids"].get<std::vector<std::int64_t>>());
      if (c.contains("type_ids")) CHECK(e.type_ids == c["type_ids"].get<std::vector<std::int64_t>>());
      if (c.contains("decoded")) CHECK(tok.decode(e.ids) == c["decoded"].get<std::string>());
    }
  }
}

TEST_CASE("Tokenizers equal HF tokenizers on the adversarial list: ids, type ids, truncation, decoding (all-MiniLM-L6-v2)",
          "[text]") {
  adversarial_list(kSubjects[0]);
}
TEST_CASE("Tokenizers equal HF tokenizers on the adversarial list: ids, type ids, truncation, decoding (SmolLM2)", "[text]") {
  adversarial_list(kSubjects[1]);
}

void real_corpora(const Subject& subject) {
  if (!fs::exists(peft::text::data_dir() / "corpora") || !fs::exists(peft::text::data_dir() / "wordnet")) {
    PEFT_SKIP("no corpora in " << peft::text::data_dir() << " (scripts/fetch_data.sh)");
  }
  PEFT_NEEDS_TOKENIZER(subject);
  const auto dir = peft::text::data_dir() / subject.model;
  const auto want = fixture_json(subject.fixture);
  const auto tok = peft::text::Tokenizer::from_file(dir);
  const std::size_t chunk = want["chunk"];
  std::size_t texts = 0, tokens = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& corpus : want["corpora"]) {
    const auto file = corpus["file"].get<std::string>();
    const auto rows = corpus["kind"] == "wordnet" ? peft::text::read_wordnet_glosses(peft::text::data_dir() / file)
                                                  : peft::text::read_labelled_csv(peft::text::data_dir() / file);
    INFO(subject.model << " on " << file);
    REQUIRE(rows.size() == corpus["count"].get<std::size_t>());
    const auto digests = corpus["digests"].get<std::vector<std::string>>();
    for (std::size_t start = 0, k = 0; start < rows.size(); start += chunk, ++k) {
      std::uint64_t h = 0xCBF29CE484222325ULL;
      for (std::size_t i = start; i < std::min(rows.size(), start + chunk); ++i) {
        const auto ids = tok.encode(rows[i].text).ids;
        tokens += ids.size();
        h = fnv1a(ids_line(ids), h);
      }
      char hex[17];
      std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
      INFO("texts " << start << ".." << std::min(rows.size(), start + chunk) - 1);
      CHECK(std::string(hex) == digests[k]);
    }
    texts += rows.size();
  }
  CHECK(texts == 129609);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN(subject.model << ": " << texts << " texts, " << tokens << " tokens, all equal to HF tokenizers' ("
                     << static_cast<long>(static_cast<double>(tokens) / s) << " tokens/s with reading)");
}

TEST_CASE("Tokenizers equal HF tokenizers on every text of seven real corpora (all-MiniLM-L6-v2)", "[text]") {
  real_corpora(kSubjects[0]);
}
TEST_CASE("Tokenizers equal HF tokenizers on every text of seven real corpora (SmolLM2)", "[text]") { real_corpora(kSubjects[1]); }

TEST_CASE("WordPiece: decode, batches, errors", "[text]") {
  // a small vocabulary, no files
  std::vector<std::string> vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "movie", "was", "great", "!", "un",
                                    "##believ", "##able", "cafe", ",", "'", "s", "it"};
  const WordPiece tok(vocab, {});
  const auto e = tok.encode("The movie was UNBELIEVABLE!");
  CHECK(e.tokens == std::vector<std::string>{"[CLS]", "the", "movie", "was", "un", "##believ", "##able", "!", "[SEP]"});
  CHECK(tok.decode(e.ids) == "the movie was unbelievable!");
  CHECK(tok.decode(tok.encode("it's, Café").ids) == "it ' s, cafe");  // HF's cleanup leaves the apostrophe spaced
  CHECK(tok.encode("unknownword").tokens[1] == "[UNK]");
  const auto b = tok.encode_batch({"the movie", "the movie was great !"}, 5);
  CHECK(b.input_ids.sizes() == torch::IntArrayRef{2, 5});
  CHECK(torch::equal(b.input_ids[0], torch::tensor({2, 4, 5, 3, 0}, torch::kLong)));
  CHECK(b.attention_mask.sum().item<int64_t>() == 9);
  CHECK(b.input_ids[1][4].item<int64_t>() == 3);  // truncated, [SEP] kept
  CHECK_THROWS_AS(tok.encode("x", true, 1), peft::InputError);
  CHECK_THROWS_AS(tok.decode({99}), peft::InputError);
  CHECK_THROWS_AS(WordPiece({"a"}, {}), peft::ConfigError);  // no [UNK]
  CHECK_THROWS_AS(WordPiece::from_file("/nonexistent/vocab.txt"), peft::IoError);
}

TEST_CASE("MiniLM: our tokenizer and BertModel on the real weights give transformers' outputs", "[text][minilm]") {
  const auto dir = peft::text::data_dir() / "minilm";
  if (!fs::exists(dir / "model.safetensors")) {
    PEFT_SKIP("no all-MiniLM-L6-v2 in " << dir << " (scripts/fetch_data.sh)");
  }
  auto [meta, ref] = reference("minilm_reference");
  const auto sentences = meta["sentences"].get<std::vector<std::string>>();

  // token ids, padding and masks equal HF tokenizers' batch
  const auto tok = WordPiece::from_file(dir);
  std::vector<peft::text::Encoding> encs;
  for (const auto& s : sentences) encs.push_back(tok.encode(s));
  const auto batch = peft::text::pad_batch(encs, tok.pad_id());
  CHECK(torch::equal(batch.input_ids, ref["input_ids"]));
  CHECK(torch::equal(batch.attention_mask, ref["attention_mask"]));
  CHECK(torch::equal(batch.token_type_ids, ref["token_type_ids"]));

  peft::models::BertModel model(peft::models::BertConfig::from_file((dir / "config.json").string()), true, false);
  const auto report = peft::load_pretrained(model, dir.string());
  CHECK(report.skipped.empty());
  CHECK(report.new_head.empty());
  model->eval();
  torch::NoGradGuard no_grad;
  const auto out = model->forward(batch.input_ids, batch.attention_mask, batch.token_type_ids);
  const auto max_err = [](const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); };
  const double hidden_err = max_err(out.last_hidden_state, ref["last_hidden_state"]);
  const double pooler_err = max_err(out.pooler_output, ref["pooler_output"]);
  const auto emb = peft::models::mean_pool(out.last_hidden_state, batch.attention_mask, true);
  const double emb_err = max_err(emb, ref["sentence_embedding"]);
  WARN("MiniLM vs transformers, max abs error: hidden " << hidden_err << ", pooler " << pooler_err << ", embedding " << emb_err);
  CHECK(hidden_err < 1e-4);
  CHECK(pooler_err < 1e-4);
  CHECK(emb_err < 1e-5);
  // the embeddings mean something: the two film reviews are closer to each other than to the biology sentence
  const auto cos = torch::mm(emb, emb.t());
  CHECK(cos[0][1].item<double>() > cos[0][2].item<double>());
}

TEST_CASE("SmolLM2: our BPE and LlamaForCausalLM on the real weights give transformers' logits and greedy text", "[text][smollm2]") {
  const auto dir = peft::text::data_dir() / "smollm2";
  if (!fs::exists(dir / "model.safetensors")) {
    PEFT_SKIP("no SmolLM2 in " << dir << " (scripts/fetch_data.sh, with the venv)");
  }
  auto [meta, ref] = reference("smollm2_reference");
  const auto prompts = meta["prompts"].get<std::vector<std::string>>();
  const auto tok = peft::text::Tokenizer::from_file(dir);
  peft::models::LlamaForCausalLM lm(peft::models::LlamaConfig::from_file((dir / "config.json").string()));
  const auto report = peft::load_pretrained(lm, dir.string());
  CHECK(report.skipped.empty());
  lm->eval();
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto key = "prompt" + std::to_string(i);
    INFO(prompts[i]);
    const auto ids = torch::tensor(tok.encode(prompts[i]).ids, torch::kLong);
    REQUIRE(torch::equal(ids, ref[key + ".input_ids"]));
    const auto logits = lm->forward(ids.unsqueeze(0)).select(0, 0).select(0, -1);
    const auto want = ref[key + ".last_logits"];
    const double err = (logits - want).abs().max().item<double>();
    WARN("SmolLM2 vs transformers, prompt " << i << ": max abs logit error " << err << " (logits span "
                                            << want.min().item<double>() << ".." << want.max().item<double>() << ")");
    CHECK(err < 2e-3);
    const auto greedy = peft::models::generate(*lm, ids.unsqueeze(0), peft::models::GenerationOptions()
                                                                          .max_new_tokens(meta["new_tokens"].get<int64_t>())
                                                                          .eos_token_ids(std::vector<int64_t>{}));
    const auto new_tokens = greedy.select(0, 0).slice(0, ids.size(0));
    CHECK(torch::equal(new_tokens, ref[key + ".greedy"]));
    std::vector<int64_t> v(new_tokens.data_ptr<int64_t>(), new_tokens.data_ptr<int64_t>() + new_tokens.numel());
    WARN("SmolLM2: \"" << prompts[i] << "\" -> \"" << tok.decode(v) << "\"");
  }
}

TEST_CASE("Text data layer: splits, labels, encoding, the loader, the cache", "[text][data]") {
  namespace T = peft::text;
  // portable permutation and split: a permutation, fixed by the seed, parts disjoint
  const auto p = T::permutation(1000, 7);
  auto sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < sorted.size(); ++i) REQUIRE(sorted[i] == i);
  CHECK(T::permutation(1000, 7) == p);
  CHECK(T::permutation(1000, 8) != p);
  std::vector<int> items(50);
  std::iota(items.begin(), items.end(), 0);
  const auto parts = T::split(items, {30, 10, 5}, 3);
  REQUIRE(parts.size() == 3);
  CHECK(parts[0].size() == 30);
  CHECK(parts[2].size() == 5);
  std::set<int> seen;
  for (const auto& part : parts) seen.insert(part.begin(), part.end());
  CHECK(seen.size() == 45);
  CHECK_THROWS_WITH(T::split(items, {40, 20}, 0), Catch::Contains("60") && Catch::Contains("50"));

  // labels: sorted, so a file's row order does not change an index; unknown labels named
  const std::vector<T::LabelledText> rows = {{"pos", "the movie was great !"}, {"neg", "the movie"},
                                             {"pos", "it was great"}, {"neg", "the cafe"}, {"mid", "it", "the movie"}};
  const auto labels = T::LabelSet::from_rows(rows);
  CHECK(labels.names() == std::vector<std::string>{"mid", "neg", "pos"});
  CHECK(labels.index("pos") == 2);
  CHECK_THROWS_WITH(labels.index("nope"), Catch::Contains("\"nope\"") && Catch::Contains("mid, neg, pos"));
  CHECK_THROWS_AS(T::LabelSet({"a", "a"}), peft::InputError);

  // encoding: each row as the tokenizer encodes it (pairs as pairs), padded to the longest
  std::vector<std::string> vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "movie", "was", "great", "!", "it", "cafe"};
  const T::Tokenizer tok(T::WordPiece(vocab, {}));
  const auto d = T::encode_classification(tok, rows, labels, 0);
  REQUIRE(d.size() == 5);
  CHECK(d.input_ids.size(1) == 7);  // [CLS] the movie was great ! [SEP]
  CHECK(torch::equal(d.labels, torch::tensor({2, 1, 2, 1, 0}, torch::kLong)));
  const auto pair = tok.encode_pair("it", "the movie");
  CHECK(torch::equal(d.input_ids[4].narrow(0, 0, 6), torch::tensor(pair.ids, torch::kLong)));
  CHECK(torch::equal(d.token_type_ids[4].narrow(0, 0, 6), torch::tensor({0, 0, 0, 1, 1, 1}, torch::kLong)));
  CHECK(d.tokens() == 7 + 4 + 5 + 4 + 6);
  CHECK(T::encode_classification(tok, rows, labels, 4).input_ids.size(1) == 4);

  // the loader: an epoch sees every row once, batches trimmed to their longest row, a new order per epoch
  T::DataLoader::Options o;
  o.batch_size = 2, o.seed = 5;
  T::DataLoader loader(d, o);
  CHECK(loader.batches_per_epoch() == 3);
  std::vector<std::int64_t> first_epoch;
  for (int k = 0; k < 3; ++k) {
    const auto b = loader.next();
    CHECK(b.attention_mask.select(1, b.attention_mask.size(1) - 1).sum().item<int64_t>() >= 1);  // no all-padding column
    for (int64_t r = 0; r < b.size(); ++r) first_epoch.push_back(b.input_ids[r][1].item<int64_t>() * 100 + b.labels[r].item<int64_t>());
  }
  CHECK(first_epoch.size() == 5);
  CHECK(loader.epoch() == 1);
  loader.next();
  CHECK(loader.epoch() == 2);
  // grouped by length: still every row once per epoch, and batches of similar lengths
  {
    std::vector<T::LabelledText> many;
    const std::vector<std::string> words = {"the", "movie", "was", "great", "it", "cafe"};
    for (int i = 0; i < 200; ++i) {
      std::string text;
      for (int k = 0; k <= (i * 7919) % 23; ++k) text += words[static_cast<std::size_t>(k % 6)] + " ";
      many.push_back({i % 2 ? "pos" : "neg", text});
    }
    const auto md = T::encode_classification(tok, many, labels, 0);
    T::DataLoader::Options g;
    g.batch_size = 8, g.seed = 1;
    int64_t padded_plain = 0, padded_grouped = 0, rows_seen = 0;
    for (const auto& b : T::DataLoader(md, g)) padded_plain += b.attention_mask.numel();
    g.group_by_length = true;
    std::set<int64_t> lengths_seen;
    T::DataLoader grouped(md, g);
    for (int k = 0; k < grouped.batches_per_epoch(); ++k) {
      const auto b = grouped.next();
      padded_grouped += b.attention_mask.numel();
      rows_seen += b.size();
    }
    CHECK(rows_seen == 200);
    CHECK(grouped.epoch() == 1);
    CHECK(padded_grouped < padded_plain * 3 / 4);  // 23 lengths over 200 rows: sorting removes most padding
    CHECK(md.tokens() * 10 > padded_grouped * 9);
  }
  o.shuffle = false, o.batch_size = 4;
  std::vector<torch::Tensor> in_order;
  for (const auto& b : T::DataLoader(d, o)) in_order.push_back(b.labels);
  REQUIRE(in_order.size() == 2);
  CHECK(torch::equal(torch::cat(in_order), d.labels));
  o.drop_last = true;
  CHECK(T::DataLoader(d, o).batches_per_epoch() == 1);
  o.batch_size = 6;
  CHECK_THROWS_AS(T::DataLoader(d, o), peft::InputError);
  o.batch_size = 0;
  CHECK_THROWS_AS(T::DataLoader(d, o), peft::InputError);

  // causal LM: eos appended, labels = ids except -100 on padding, max_length kept
  const auto lm = T::encode_causal_lm(tok, {"the movie was great !", "it"}, 5, 3);
  CHECK(lm.input_ids.size(1) == 5);
  CHECK(lm.input_ids[0][4].item<int64_t>() == 3);
  CHECK(torch::equal(lm.labels[1], torch::tensor({2, 9, 3, 3, -100}, torch::kLong)));

  // save / load and the cache: same key reads the file, another key or a damaged file rebuilds it
  const auto dir = fs::temp_directory_path() / "peft_text_data_test";
  fs::remove_all(dir);
  fs::create_directories(dir);
  d.save(dir / "d.safetensors");
  const auto back = T::TextDataset::load(dir / "d.safetensors");
  CHECK(torch::equal(back.input_ids, d.input_ids));
  CHECK(torch::equal(back.token_type_ids, d.token_type_ids));
  CHECK(back.label_names == labels.names());
  int made = 0;
  auto make = [&] { return ++made, d; };
  T::cached(dir / "c.safetensors", "k1", make);
  T::cached(dir / "c.safetensors", "k1", make);
  CHECK(made == 1);
  T::cached(dir / "c.safetensors", "k2", make);
  CHECK(made == 2);
  std::ofstream(dir / "c.safetensors", std::ios::trunc) << "garbage";
  CHECK(torch::equal(T::cached(dir / "c.safetensors", "k2", make).labels, d.labels));
  CHECK(made == 3);
  peft::save_safetensors((dir / "other.safetensors").string(), torch::OrderedDict<std::string, torch::Tensor>{});
  CHECK_THROWS_WITH(T::TextDataset::load(dir / "other.safetensors"), Catch::Contains("other.safetensors") && Catch::Contains("input_ids"));
  fs::remove_all(dir);
}

TEST_CASE("WordNet synsets: words, categories and definitions of the real files", "[text][data]") {
  const auto dir = peft::text::data_dir() / "wordnet";
  if (!fs::exists(dir / "data.noun")) {
    PEFT_SKIP("no WordNet in " << dir << " (scripts/fetch_data.sh)");
  }
  const auto synsets = peft::text::read_wordnet_synsets(dir);
  CHECK(synsets.size() == 117659);  // WordNet 3.0: 82,115 noun + 13,767 verb + 18,156 adjective + 3,621 adverb synsets
  const auto dog = std::find_if(synsets.begin(), synsets.end(), [](const auto& s) {
    return std::find(s.words.begin(), s.words.end(), "domestic dog") != s.words.end();
  });
  REQUIRE(dog != synsets.end());
  CHECK(dog->lexname == "noun.animal");
  CHECK(dog->words.front() == "dog");
  CHECK(dog->definition().rfind("a member of the genus Canis", 0) == 0);
  CHECK(dog->gloss.find("\"the dog barked all night\"") != std::string::npos);
  CHECK(dog->definition().find('"') == std::string::npos);
  // adjective markers such as "(p)" are not part of the word
  std::size_t marked = 0, words = 0;
  for (const auto& s : synsets)
    for (const auto& w : s.words) ++words, marked += w.find('(') != std::string::npos;
  CHECK(marked == 0);
  CHECK(words > 200000);
}

}  // namespace peft_tests_text
