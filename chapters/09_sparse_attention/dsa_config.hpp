/// @file dsa_config.hpp
/// @brief The config of a DeepSeek-V3.2 attention layer: MLA's fields plus the lightning
///        indexer's three (`index_n_heads`, `index_head_dim`, `index_topk`), validated.
#pragma once

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

#include "mla/config.hpp"

namespace mla::ch09 {

/// @defgroup ch09 Chapter 9 — DeepSeek Sparse Attention
/// @brief A lightning indexer scores every cached token, the top `index_topk` are kept, and MLA's
///        absorbed attention runs over those only (DeepSeek-V3.2).
/// @{

/// A DSA layer's config: the MLA layer's fields (chapter 6) and the indexer's.
struct DsaConfig {
  MlaConfig mla;                   ///< the MLA layer the indexer restricts (must have q_lora_rank)
  std::size_t index_n_heads = 0;   ///< HI: indexer query heads (64 in V3.2)
  std::size_t index_head_dim = 0;  ///< DI: indexer head size, a power of two (128 in V3.2)
  std::size_t index_topk = 0;      ///< tokens kept per query (2048 in V3.2)

  /// Indexer features that RoPE rotates: qk_rope_head_dim (there is no field of its own); they
  /// come FIRST in each indexer head (MLA's rope part comes last).
  std::size_t index_rope_dim() const { return mla.qk_rope_head_dim; }

  /// MlaConfig::from_json, then the three index_* fields (required), then check_dsa_config.
  static DsaConfig from_json(const nlohmann::json& j, const std::string& origin);
  /// from_json of the file at `path`.
  static DsaConfig load(const std::string& path);
};

/// True if a parsed config.json describes a DSA layer: it has an `index_topk` field, or names the
/// architecture DeepseekV32ForCausalLM / model_type deepseek_v32.
bool is_dsa_config(const nlohmann::json& j);

/// The one validation of a DsaConfig (InputError "<origin>: field '<name>' ..."): every rule of
/// check_mla_config, then q_lora_rank set (the indexer's queries come from MLA's query latent),
/// index_n_heads >= 1, index_topk >= 1, index_head_dim >= qk_rope_head_dim (its rope part is
/// qk_rope_head_dim wide) and a power of two (the Hadamard rotation needs one).
void check_dsa_config(const DsaConfig& cfg, const std::string& origin = "DSA config");

/// @}

}  // namespace mla::ch09
