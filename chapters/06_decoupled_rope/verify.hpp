/// @file verify.hpp
/// @brief What `mla_verify` does, as a library: load a test case (config + safetensors with
///        weights and test tensors), run it through every path, compare with the expected output.
///
/// A case is the format of `data/golden/` (see its README): `NAME.config.json` (Hugging Face
/// fields) and `NAME.safetensors` holding `model.layers.N.self_attn.*` and `test.prefill.input`,
/// `test.decode.input`, `test.prefill.output`, `test.decode.output`. Anything unusable in them is
/// an mla::InputError (mla_verify exits 2); a path that computes a different result is a failed
/// row (exit 1).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "06_decoupled_rope/mla_layer.hpp"
#include "mla/compare.hpp"

namespace mla::ch06 {

/// @addtogroup ch06
/// @{

/// One test case, loaded and checked.
struct GoldenCase {
  std::string name;                           ///< file stem, e.g. "mla_v3_yarn_tiny"
  MlaConfig config;                           ///< from NAME.config.json, validated
  std::size_t layer = 0;                      ///< N of model.layers.N.self_attn.*
  std::shared_ptr<const MlaWeights> weights;  ///< layer N's, shapes checked against config
  Tensor3 prefill_input;                      ///< (B, S, d_model) at positions 0..S-1
  Tensor3 decode_input;                       ///< (B, N, d_model), one token at a time at S..S+N-1
  Tensor3 prefill_output;                     ///< (B, S, d_model) expected
  Tensor3 decode_output;                      ///< (B, N, d_model) expected
  std::optional<double> reference_softmax_scale;  ///< `__metadata__.softmax_scale`, if present
};

/// The two files of a case.
struct CaseFiles {
  std::string name,  ///< NAME, the file stem shared by both
      config,        ///< path of NAME.config.json
      weights;       ///< path of NAME.safetensors
};

/// `dir/NAME.safetensors` for `dir/NAME.config.json` (else `<config path minus
/// .json>.safetensors`).
std::string weights_path_for_config(const std::string& config_path);
/// `dir/NAME.config.json` for `dir/NAME.safetensors`.
std::string config_path_for_weights(const std::string& weights_path);

/// Every case in a folder: each `NAME.config.json` with a `NAME.safetensors` beside it, sorted by
/// name. InputError if the folder does not exist or holds no case.
std::vector<CaseFiles> find_golden_cases(const std::string& dir);

/// The layer indices N for which the checkpoint holds
/// `model.layers.N.self_attn.kv_a_proj_with_mqa`.
std::vector<std::size_t> attention_layers(const Checkpoint& ckpt);

/// Load a case. `layer`: which attention layer to use; by default the only one in the file
/// (InputError if there are none or several). InputError for a missing or malformed file, a missing
/// test tensor, test tensors whose shapes do not match each other or the config's hidden_size, or
/// weights whose shapes do not match the config.
GoldenCase load_golden_case(const std::string& config_path, const std::string& weights_path,
                            std::optional<std::size_t> layer = std::nullopt);

/// One row of the verification table.
struct VerifyRow {
  std::string case_name,   ///< GoldenCase::name
      path,                ///< MlaPath::name
      phase;               ///< "prefill" or "decode"
  std::size_t tokens = 0;  ///< tokens per sequence in this phase
  Comparison cmp;          ///< against the case's expected output
  double seconds = 0;      ///< time of the phase
  double tolerance = 0;    ///< the tolerance applied: max(asked, path's min_tolerance)
  bool pass = false;       ///< cmp finite and cmp.max_abs <= tolerance
};

/// Run `c` through every path (prefill in one call, then decode token by token, as the case was
/// made) and compare each phase's output with the expected one.
std::vector<VerifyRow> verify_case(const GoldenCase& c, const std::vector<MlaPath>& paths,
                                   double tolerance);

/// @}

}  // namespace mla::ch06
