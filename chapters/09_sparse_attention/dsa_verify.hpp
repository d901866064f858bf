/// @file dsa_verify.hpp
/// @brief What `mla_verify` does with a DSA case (data/golden/dsa/, format in its README): load
///        it, run every DSA path with the exact and the FP8 indexer, compare the layer outputs,
///        the selected index sets and the index scores.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "06_decoupled_rope/verify.hpp"
#include "09_sparse_attention/sparse_attention.hpp"
#include "mla/compare.hpp"

namespace mla::ch09 {

/// @addtogroup ch09
/// @{

/// Expected results of one indexer variant (exact or FP8).
struct DsaExpected {
  Tensor3 prefill_output, decode_output;   ///< (B, S, d_model), (B, N, d_model)
  std::vector<std::int32_t> prefill_topk;  ///< (B, S, index_topk), -1 padded
  std::vector<std::int32_t> decode_topk;   ///< (B, N, index_topk)
  Tensor3 prefill_scores;                  ///< (B, S, S), 0 after each query
  Tensor3 decode_scores;                   ///< (B, N, S + N), 0 after each query
};

/// One DSA case, loaded and checked.
struct DsaCase {
  std::string name;
  DsaConfig config;
  std::size_t layer = 0;
  std::shared_ptr<const DsaWeights> weights;
  Tensor3 prefill_input, decode_input;
  DsaExpected exact, fp8;
  Tensor3 prefill_dense, decode_dense;  ///< plain MLA (index_topk = infinity)
};

/// Load a case: the config (DsaConfig, validated), layer N's MLA and indexer weights, and every
/// test tensor of data/golden/dsa/README.md §5 with its shape checked. InputError for anything
/// missing or malformed.
DsaCase load_dsa_case(const std::string& config_path, const std::string& weights_path,
                      std::optional<std::size_t> layer = std::nullopt);

/// The case's dense expectation as a chapter-6 case (outputs = output_dense), so every MLA path
/// of chapters 6 and 7 is checked on it too.
ch06::GoldenCase dense_case(const DsaCase& c);

/// A named way of computing the sparse attention of a DSA layer.
struct DsaPath {
  std::string name, description;
  SparseCoreFactory cores;
  double min_tolerance = 0.0;
};

/// This chapter's paths: "dsa" (gathered, reference loops), "dsa_masked" (dense scores + index
/// mask, as DeepSeek's reference) and "dsa_fast" (gathered into a tile, chapter 7's kernel).
std::vector<DsaPath> dsa_paths();

/// One row of the DSA verification table.
struct DsaVerifyRow {
  std::string case_name, path, variant, phase;  ///< variant: "exact" or "fp8"
  std::size_t tokens = 0;
  Comparison cmp;                 ///< output against the expected output
  std::size_t index_rows = 0;     ///< query rows whose index sets were compared
  std::size_t index_rows_ok = 0;  ///< rows whose set equals the expected set
  double score_err = 0;           ///< max |score - expected| / (the row's largest |expected score|)
  double score_tolerance = 0;
  double tolerance = 0;
  double seconds = 0;
  bool pass = false;
};

/// Index scores are compared relative to each row's largest |score|: 1e-4 for the exact indexer
/// (float32 noise is ~1e-6), 1e-2 for FP8 (a few elements may round the other way, README §5).
inline constexpr double kExactScoreTol = 1e-4, kFp8ScoreTol = 1e-2;

/// Run `c` through every path with both indexer variants.
std::vector<DsaVerifyRow> verify_dsa_case(const DsaCase& c, const std::vector<DsaPath>& paths,
                                          double tolerance);

/// Compare two (rows, topk) index lists as sets per row (-1 entries ignored): how many rows agree.
std::size_t same_index_sets(const std::vector<std::int32_t>& got,
                            const std::vector<std::int32_t>& want, std::size_t topk);

/// @}

}  // namespace mla::ch09
