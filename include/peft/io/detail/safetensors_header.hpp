#pragma once
// The torch-free half of the safetensors reader: parse and validate the header of a file held in
// memory. Kept free of LibTorch so the fuzzer builds in seconds and exercises exactly this code.
//
// Format (https://github.com/huggingface/safetensors): 8 bytes little-endian u64 N, then N bytes of
// UTF-8 JSON (an object; padded with spaces), then the data buffer. Every key except `__metadata__`
// names a tensor {"dtype", "shape", "data_offsets": [begin, end]} with offsets relative to the buffer.

#include <peft/core/detail/strings.hpp>
#include <peft/core/error.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace peft {

/// Element types a safetensors file may hold (the subset this library reads and writes).
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

inline std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::BOOL: return 1;
  }
  return 0;
}

inline bool parse_dtype(std::string_view s, DType& out) {
  static const std::pair<const char*, DType> table[] = {
      {"F64", DType::F64}, {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16},
      {"I64", DType::I64}, {"I32", DType::I32}, {"I16", DType::I16}, {"I8", DType::I8},
      {"U8", DType::U8},   {"BOOL", DType::BOOL}};
  for (const auto& [name, d] : table)
    if (s == name) { out = d; return true; }
  return false;
}

/// Where one tensor lives in a safetensors file.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  ///< offset of the first byte, relative to the data buffer
  uint64_t end = 0;    ///< one past the last byte
  uint64_t numel() const {
    uint64_t n = 1;
    for (auto d : shape) n *= static_cast<uint64_t>(d);
    return n;
  }
};

/// A validated header: tensors in file order of their offsets, plus `__metadata__`.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  ///< absolute file offset of the data buffer (8 + header length)
};

namespace detail {

/// Largest header the reader accepts (the format's own limit).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

/// Parses and validates the header of a complete safetensors image of `size` bytes. `source` names
/// the file in error messages. Throws FormatError on every violation of the format.
inline SafetensorsHeader parse_safetensors_header(const uint8_t* data, uint64_t size,
                                                  const std::string& source) {
  auto fail = [&](const std::string& what) -> FormatError {
    return FormatError("safetensors file '" + source + "': " + what);
  };
  if (size < 8)
    throw fail("truncated: expected at least 8 bytes for the header length, received " +
               std::to_string(size) + " bytes");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > kMaxHeaderBytes)
    throw fail("header length " + std::to_string(n) + " exceeds the limit of " +
               std::to_string(kMaxHeaderBytes) + " bytes");
  if (n > size - 8)
    throw fail("header length " + std::to_string(n) + " runs past the end of the file (" +
               std::to_string(size - 8) + " bytes after the length field)");
  if (n < 2) throw fail("header of " + std::to_string(n) + " bytes cannot hold a JSON object");
  std::string_view text(reinterpret_cast<const char*>(data + 8), n);
  if (text.front() != '{')
    throw fail("header must be a JSON object starting with '{', received first byte 0x" +
               [](unsigned char c) { const char* h = "0123456789abcdef"; return std::string{h[c >> 4], h[c & 15]}; }(
                   static_cast<unsigned char>(text.front())));

  // Duplicate top-level keys are legal JSON but ambiguous here; nlohmann keeps the last one silently,
  // so track them with the parser callback.
  std::set<std::string> seen;
  std::string duplicate;
  nlohmann::json::parser_callback_t cb = [&](int depth, nlohmann::json::parse_event_t ev,
                                             nlohmann::json& parsed) {
    if (ev == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      auto k = parsed.get<std::string>();
      if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true);
  } catch (const nlohmann::json::exception& e) {
    throw fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw fail(std::string("header must be a JSON object, received ") + j.type_name());
  if (!duplicate.empty()) throw fail("duplicate tensor name '" + duplicate + "' in the header");

  SafetensorsHeader h;
  h.data_start = 8 + n;
  const uint64_t buffer = size - 8 - n;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const auto& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object())
        throw fail(std::string("__metadata__ must be an object of strings, received ") + v.type_name());
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw fail("__metadata__ value for '" + m.key() + "' must be a string, received " +
                     m.value().type_name());
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) { return fail("tensor '" + key + "': " + what); };
    if (!v.is_object()) throw bad(std::string("entry must be an object, received ") + v.type_name());
    for (auto f = v.begin(); f != v.end(); ++f)
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
        throw bad("unexpected field '" + f.key() + "' (expected dtype, shape, data_offsets)");
    TensorInfo t;
    t.name = key;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) throw bad("missing or non-string 'dtype'");
    if (!parse_dtype(dt->get_ref<const std::string&>(), t.dtype))
      throw bad("unknown dtype '" + dt->get<std::string>() +
                "' (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) throw bad("missing or non-array 'shape'");
    // Bound the element count so numel * size cannot overflow: nothing real is near 2^62 bytes.
    unsigned __int128 numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_integer()) throw bad("shape " + sh->dump() + " must hold integers");
      if (d.is_number_unsigned() ? d.get<uint64_t>() > (uint64_t{1} << 62) : d.get<int64_t>() < 0)
        throw bad("shape " + sh->dump() + " has a negative or absurd dimension");
      t.shape.push_back(d.get<int64_t>());
      numel *= static_cast<uint64_t>(t.shape.back());
      if (numel > (static_cast<unsigned __int128>(1) << 62))
        throw bad("shape " + sh->dump() + " describes an absurd number of elements");
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      throw bad("'data_offsets' must be two non-negative integers [begin, end]");
    t.begin = (*off)[0].get<uint64_t>();
    t.end = (*off)[1].get<uint64_t>();
    if (t.begin > t.end)
      throw bad("data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                "] are out of order (begin > end)");
    if (t.end > buffer)
      throw bad("data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                "] run past the data buffer of " + std::to_string(buffer) + " bytes");
    const unsigned __int128 expect = numel * dtype_size(t.dtype);
    if (expect != t.end - t.begin)
      throw bad("dtype " + std::string(dtype_name(t.dtype)) + " x shape " + shape_str(t.shape) +
                " needs " + std::to_string(static_cast<uint64_t>(expect)) + " bytes, data_offsets give " +
                std::to_string(t.end - t.begin));
    h.tensors.push_back(std::move(t));
  }
  // The buffer must be covered exactly: sorted by offset, each tensor starts where the previous ended.
  std::stable_sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const auto& t : h.tensors) {
    if (t.begin < cursor)
      throw fail("tensor '" + t.name + "' data_offsets [" + std::to_string(t.begin) + ", " +
                 std::to_string(t.end) + "] overlap the previous tensor, which ends at " +
                 std::to_string(cursor));
    if (t.begin > cursor)
      throw fail("gap in the data buffer: bytes [" + std::to_string(cursor) + ", " +
                 std::to_string(t.begin) + ") belong to no tensor (next is '" + t.name + "')");
    cursor = t.end;
  }
  if (cursor != buffer)
    throw fail("data buffer has " + std::to_string(buffer) + " bytes but the tensors cover only " +
               std::to_string(cursor));
  return h;
}

}  // namespace detail
}  // namespace peft
