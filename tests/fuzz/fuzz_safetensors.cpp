// libFuzzer target: any bytes as a safetensors file. Opening and loading every tensor must either
// succeed or throw mla::InputError; anything else (a crash, a sanitizer report, another
// exception) is a bug. A file that loads must also survive a round trip through the writer:
// write its float tensors and metadata again, read them back, get the same values.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "mla/safetensors.hpp"
#include "mla/safetensors_writer.hpp"

namespace {

bool same_value(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::memcmp(&a, &b, sizeof a) == 0;  // bitwise: keeps -0 apart from +0
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<mla::TensorData> loaded;
  std::map<std::string, std::string> metadata;
  try {
    const auto st =
        mla::SafeTensors::from_bytes(std::vector<std::uint8_t>(data, data + size), "fuzz");
    for (const auto& [k, v] : st.metadata().items()) metadata[k] = v.get<std::string>();
    for (const auto& name : st.names()) {
      const auto& info = st.info(name);
      if (info.dtype == mla::DType::Other) {
        try {
          (void)st.load(name);
          __builtin_trap();  // a non-float dtype must be refused
        } catch (const mla::InputError&) {
        }
        continue;
      }
      auto v = st.load(name);
      if (v.size() != info.numel()) __builtin_trap();  // load gives numel() values
      if (info.shape.size() == 2) (void)st.load_matrix(name, info.shape[0], info.shape[1]);
      if (info.shape.size() == 3) (void)st.load_tensor3(name);
      loaded.push_back({name, info.dtype, info.shape, std::move(v)});
    }
  } catch (const mla::InputError&) {
    return 0;
  }

  // The values were read from F32/BF16/F16, so writing them in the same dtype is exact.
  const auto again =
      mla::SafeTensors::from_bytes(mla::safetensors_bytes(loaded, metadata), "again");
  if (again.names().size() != loaded.size()) __builtin_trap();
  for (const auto& t : loaded) {
    const auto v = again.load(t.name);
    if (again.info(t.name).shape != t.shape || v.size() != t.values.size()) __builtin_trap();
    for (std::size_t i = 0; i < v.size(); ++i)
      if (!same_value(v[i], t.values[i])) __builtin_trap();
  }
  for (const auto& [k, v] : metadata)
    if (again.metadata().at(k) != v) __builtin_trap();
  return 0;
}
