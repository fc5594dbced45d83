// libFuzzer target for the safetensors header parser: any input must either parse into a header whose
// tensors tile the data buffer exactly, or raise peft::FormatError. Anything else (a crash, a sanitizer
// report, another exception type) is a bug.
#include <peft/io/detail/safetensors_header.hpp>

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto h = peft::detail::parse_safetensors_header(data, size, "fuzz");
    uint64_t cursor = 0;
    for (const auto& t : h.tensors) {
      if (t.begin != cursor || t.end < t.begin || t.end - t.begin != t.numel() * peft::dtype_size(t.dtype)) std::abort();
      cursor = t.end;
    }
    if (h.data_start + cursor != size) std::abort();
  } catch (const peft::FormatError&) {
  }
  return 0;
}
