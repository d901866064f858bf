// libFuzzer target: any text as a model.safetensors.index.json. The index is parsed from the text
// (no files), then assembled into a Checkpoint whose every shard is the same small valid file in
// memory, so the "tensor is in the shard the index names" check runs too.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "mla/checkpoint.hpp"
#include "mla/safetensors_writer.hpp"

namespace {

const std::vector<std::uint8_t>& shard_bytes() {
  static const auto bytes = mla::safetensors_bytes(
      {{"model.layers.0.self_attn.q_proj.weight", mla::DType::BF16, {2, 3}, {1, 2, 3, 4, 5, 6}},
       {"test.prefill.input", mla::DType::F32, {1, 1, 2}, {0.5f, -0.5f}}});
  return bytes;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const std::string text(reinterpret_cast<const char*>(data), size);
    const auto index = mla::parse_safetensors_index(text, "fuzz.index.json");
    std::map<std::string, mla::SafeTensors> shards;
    std::size_t n = 0;
    for (const auto& shard : index.shards()) {
      if (++n > 64) break;  // the rest stay unopened: from_index must report them, not crash
      shards.emplace(shard, mla::SafeTensors::from_bytes(shard_bytes(), shard));
    }
    const auto ck = mla::Checkpoint::from_index(index, std::move(shards), "fuzz.index.json");
    for (const auto& name : ck.names()) (void)ck.load(name);
  } catch (const mla::InputError&) {
  }
  return 0;
}
