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
  Tensor3 prefill_output;                  ///< (B, S, d_model)
  Tensor3 decode_output;                   ///< (B, N, d_model)
  std::vector<std::int32_t> prefill_topk;  ///< (B, S, index_topk), -1 padded
  std::vector<std::int32_t> decode_topk;   ///< (B, N, index_topk)
  Tensor3 prefill_scores;                  ///< (B, S, S), 0 after each query
  Tensor3 decode_scores;                   ///< (B, N, S + N), 0 after each query
};

/// One DSA case, loaded and checked.
struct DsaCase {
  std::string name;                           ///< the weights file's stem
  DsaConfig config;                           ///< the validated DSA config
  std::size_t layer = 0;                      ///< the checkpoint layer the weights come from
  std::shared_ptr<const DsaWeights> weights;  ///< that layer's MLA and indexer weights
  Tensor3 prefill_input;                      ///< (B, S, d_model)
  Tensor3 decode_input;                       ///< (B, N, d_model), one token per decode call
  DsaExpected exact;                          ///< expected results with the exact indexer
  DsaExpected fp8;                            ///< expected results with the FP8 indexer
  Tensor3 prefill_dense;  ///< (B, S, d_model), plain MLA (index_topk = infinity)
  Tensor3 decode_dense;   ///< (B, N, d_model), plain MLA (index_topk = infinity)
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
  std::string name;            ///< "dsa", "dsa_masked" or "dsa_fast"
  std::string description;     ///< one line for the verification table
  SparseCoreFactory cores;     ///< makes the layer's sparse attention cores
  double min_tolerance = 0.0;  ///< the output tolerance never goes below this
};

/// This chapter's paths: "dsa" (gathered, reference loops), "dsa_masked" (dense scores + index
/// mask, as DeepSeek's reference) and "dsa_fast" (gathered into a tile, chapter 7's kernel).
std::vector<DsaPath> dsa_paths();

/// One row of the DSA verification table.
struct DsaVerifyRow {
  std::string case_name;          ///< DsaCase::name
  std::string path;               ///< DsaPath::name
  std::string variant;            ///< "exact" or "fp8"
  std::string phase;              ///< "prefill" or "decode"
  std::size_t tokens = 0;         ///< tokens per sequence in this phase (S or N)
  Comparison cmp;                 ///< output against the expected output
  std::size_t index_rows = 0;     ///< query rows whose index sets were compared
  std::size_t index_rows_ok = 0;  ///< rows whose set equals the expected set
  double score_err = 0;           ///< max |score - expected| / (the row's largest |expected score|)
  double score_tolerance = 0;     ///< kExactScoreTol or kFp8ScoreTol
  double tolerance = 0;           ///< output tolerance: max(requested, DsaPath::min_tolerance)
  double seconds = 0;             ///< wall time of the path's prefill and decode run
  bool pass = false;              ///< output, index sets and scores all within tolerance
};

/// Index scores are compared relative to each row's largest |score|: 1e-4 for the exact indexer
/// (float32 noise is ~1e-6), 1e-2 for FP8 (a few elements may round the other way, README §5).
inline constexpr double kExactScoreTol = 1e-4;
/// Relative index score tolerance of the FP8 indexer (see kExactScoreTol).
inline constexpr double kFp8ScoreTol = 1e-2;

/// Run `c` through every path with both indexer variants.
std::vector<DsaVerifyRow> verify_dsa_case(const DsaCase& c, const std::vector<DsaPath>& paths,
                                          double tolerance);

/// Compare two (rows, topk) index lists as sets per row (-1 entries ignored): how many rows agree.
std::size_t same_index_sets(const std::vector<std::int32_t>& got,
                            const std::vector<std::int32_t>& want, std::size_t topk);

/// @}

}  // namespace mla::ch09
