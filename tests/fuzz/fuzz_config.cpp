// libFuzzer target: any text as a config.json. MlaConfig::parse (JSON, then from_json) must
// succeed or throw mla::InputError, and a config that loads must satisfy what from_json promises.
#include <cstddef>
#include <cstdint>
#include <string>

#include "mla/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const std::string text(reinterpret_cast<const char*>(data), size);
    const auto c = mla::MlaConfig::parse(text, "fuzz.json");
    const bool ok = c.hidden_size > 0 && c.num_attention_heads > 0 && c.kv_lora_rank > 0 &&
                    c.qk_rope_head_dim % 2 == 0 && c.rope_theta > 1 && c.rms_norm_eps > 0 &&
                    (!c.q_lora_rank || *c.q_lora_rank > 0) &&
                    (!c.yarn || (c.yarn->factor > 0 && c.yarn->beta_fast > c.yarn->beta_slow));
    if (!ok) __builtin_trap();
  } catch (const mla::InputError&) {
  }
  return 0;
}
