#pragma once
/// \file safetensors.hpp
/// Reading and writing the safetensors format with LibTorch tensors.
///
///     peft::SafetensorsFile f("model.safetensors");          // mmap + full header validation
///     torch::Tensor w = f.tensor("encoder.layer.0.attention.self.query.weight");
///     auto all = peft::load_safetensors("adapter_model.safetensors");   // tensors + metadata
///     peft::save_safetensors("out.safetensors", all.tensors, {{"format", "pt"}});  // atomic

#include <peft/core/detail/atomic_file.hpp>
#include <peft/core/error.hpp>
#include <peft/io/detail/safetensors_header.hpp>

#include <ATen/ATen.h>
#include <torch/ordered_dict.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace peft {

inline at::ScalarType to_scalar_type(DType d) {
  switch (d) {
    case DType::F64: return at::kDouble;
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::I64: return at::kLong;
    case DType::I32: return at::kInt;
    case DType::I16: return at::kShort;
    case DType::I8: return at::kChar;
    case DType::U8: return at::kByte;
    case DType::BOOL: return at::kBool;
  }
  return at::kFloat;
}

inline DType to_dtype(at::ScalarType s, const std::string& tensor_name) {
  switch (s) {
    case at::kDouble: return DType::F64;
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kLong: return DType::I64;
    case at::kInt: return DType::I32;
    case at::kShort: return DType::I16;
    case at::kChar: return DType::I8;
    case at::kByte: return DType::U8;
    case at::kBool: return DType::BOOL;
    default:
      throw FormatError("tensor '" + tensor_name + "': dtype " + std::string(c10::toString(s)) +
                        " cannot be stored in safetensors (expected one of F64, F32, F16, BF16, I64, "
                        "I32, I16, I8, U8, BOOL)");
  }
}

/// Tensors in file order together with the file's `__metadata__`.
struct SafetensorsContents {
  torch::OrderedDict<std::string, at::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

/// A memory-mapped safetensors file whose header has been validated in full at construction.
/// Tensors are copied out on request (the result owns its memory and outlives the file object).
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path)
      : map_(std::make_unique<detail::MappedFile>(path)),
        header_(detail::parse_safetensors_header(map_->data(), map_->size(), path)) {
    for (std::size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
  }

  const std::string& path() const { return map_->path(); }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  /// Tensor descriptions in the order of their data in the file.
  const std::vector<TensorInfo>& infos() const { return header_.tensors; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }

  const TensorInfo& info(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end())
      throw FormatError("safetensors file '" + path() + "' has no tensor '" + name + "'");
    return header_.tensors[it->second];
  }

  /// A CPU tensor with the file's dtype and shape (a copy of the mapped bytes).
  at::Tensor tensor(const std::string& name) const {
    const TensorInfo& t = info(name);
    auto out = at::empty(t.shape, at::TensorOptions().dtype(to_scalar_type(t.dtype)));
    if (t.end > t.begin)
      std::memcpy(out.data_ptr(), map_->data() + header_.data_start + t.begin, t.end - t.begin);
    return out;
  }

  /// Every tensor, in file order.
  SafetensorsContents read_all() const {
    SafetensorsContents c;
    for (const auto& t : header_.tensors) c.tensors.insert(t.name, tensor(t.name));
    c.metadata = header_.metadata;
    return c;
  }

 private:
  std::unique_ptr<detail::MappedFile> map_;
  SafetensorsHeader header_;
  std::map<std::string, std::size_t> index_;
};

/// Reads a whole safetensors file (validated before anything is returned).
inline SafetensorsContents load_safetensors(const std::string& path) { return SafetensorsFile(path).read_all(); }

/// Serializes tensors to a safetensors image: header padded with spaces to a multiple of 8, tensors
/// in the given order. Tensors may live on any device and be non-contiguous.
inline void save_safetensors(const std::string& path, const torch::OrderedDict<std::string, at::Tensor>& tensors,
                             const std::map<std::string, std::string>& metadata = {{"format", "pt"}}) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& item : tensors) {
    const std::string& name = item.key();
    if (name == "__metadata__") throw FormatError("tensor name '__metadata__' is reserved by the format");
    const at::Tensor& t = item.value();
    if (!t.defined()) throw FormatError("tensor '" + name + "' is undefined and cannot be saved to '" + path + "'");
    DType d = to_dtype(t.scalar_type(), name);
    auto c = t.detach().to(at::kCPU).contiguous();
    uint64_t bytes = static_cast<uint64_t>(c.numel()) * dtype_size(d);
    nlohmann::ordered_json e;
    e["dtype"] = dtype_name(d);
    e["shape"] = c.sizes().vec();
    e["data_offsets"] = {offset, offset + bytes};
    header[name] = e;
    offset += bytes;
    data.push_back(c);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  detail::atomic_write(path, [&](detail::FileSink& sink) {
    uint8_t len[8];
    uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    sink.write(len, 8);
    sink.write(text);
    for (const auto& c : data) sink.write(c.data_ptr(), static_cast<std::size_t>(c.nbytes()));
  });
}

}  // namespace peft
