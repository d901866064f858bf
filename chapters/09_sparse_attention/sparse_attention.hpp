/// @file sparse_attention.hpp
/// @brief Sparse MLA: the absorbed attention of chapter 6 over the cache rows the indexer
///        selected, in two forms (gathered through an index list, as FlashMLA's sparse kernels
///        take `indices`; and masked, as DeepSeek's reference adds an index mask), and the whole
///        DSA layer: chapter 6's AbsorbedMla + the indexer + top-k.
///
/// For one query (H heads) and its index list idx (k entries, -1 = unused):
///
///     s_h,j  = scale · (q_lat_h · C[idx_j] + q_rope_h · K_R[idx_j])      j with idx_j >= 0
///     out_h  = Σ_j softmax_j(s_h) · C[idx_j]                              (H, d_c)
///
/// which is MLA with every non-selected token's probability exactly 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "06_decoupled_rope/latent_attention.hpp"
#include "06_decoupled_rope/mla_layer.hpp"
#include "09_sparse_attention/indexer.hpp"

namespace mla::ch09 {

/// @addtogroup ch09
/// @{

/// The latent cache of one sequence as the sparse kernels read it: row t of C (d_c) and of K_R
/// (d_r), `rows` of them.
struct LatentRows {
  const float* c = nullptr;   ///< (rows, d_c) normalized latents
  const float* kr = nullptr;  ///< (rows, d_r) rotated rope keys
  std::size_t rows = 0;       ///< tokens in the cache
  std::size_t d_c = 0;        ///< latent width
  std::size_t d_r = 0;        ///< rope key width
};

/// One query's heads: q_lat (H, d_c), q_rope (H, d_r), out (H, d_c).
struct SparseQuery {
  std::size_t heads = 0;          ///< H
  const float* q_lat = nullptr;   ///< (H, d_c) absorbed latent queries
  const float* q_rope = nullptr;  ///< (H, d_r) rotated rope queries
  float scale = 1.0f;             ///< softmax scale applied to the scores
  float* out = nullptr;           ///< (H, d_c) attention output, written
};

/// Refuse an index list that a kernel must not read: an entry below -1 or >= `visible`, or a
/// position listed twice. std::invalid_argument naming the entry and the position.
void check_indices(const std::int32_t* idx, std::size_t k, std::size_t visible);

/// Gathered sparse attention: only the rows idx names are read (NaN in any other row is never
/// touched); -1 entries are skipped; no valid entry gives out = 0. Checks idx first.
void sparse_attend_gathered(const LatentRows& cache, const std::int32_t* idx, std::size_t k,
                            std::size_t visible, const SparseQuery& q);

/// Masked sparse attention, the reference's form: dense scores over tokens 0..visible-1, an
/// additive mask (0 at the selected positions, -inf elsewhere), softmax, weighted sum.
void sparse_attend_masked(const LatentRows& cache, const std::int32_t* idx, std::size_t k,
                          std::size_t visible, const SparseQuery& q);

/// Which sparse form a layer runs.
enum class SparseForm { Gathered, Masked };

/// The index lists of the current call, shared by the layer (which writes them) and its
/// sequences' attention cores (which read them): per sequence (S, topk), -1 padded.
struct Selection {
  std::size_t S = 0;                               ///< queries per sequence in this call
  std::size_t topk = 0;                            ///< entries per index list
  std::vector<std::vector<std::int32_t>> indices;  ///< B entries of (S, topk)
  /// The index list (topk) of query s of sequence b.
  const std::int32_t* row(std::size_t b, std::size_t s) const {
    return indices[b].data() + s * topk;
  }
};

/// A chapter-6 attention core (LatentAttention) that attends only to the selected tokens of
/// sequence `seq` in `selection`, in the form `form`.
std::unique_ptr<ch06::LatentAttention> make_sparse_latent_attention(
    std::size_t heads, std::size_t d_c, std::size_t d_r, std::shared_ptr<const Selection> selection,
    std::size_t seq, SparseForm form);

/// Makes the attention core of sequence `seq` of a DSA layer (the form, the kernels).
using SparseCoreFactory = std::function<std::unique_ptr<ch06::LatentAttention>(
    std::size_t heads, std::size_t d_c, std::size_t d_r, std::shared_ptr<const Selection> selection,
    std::size_t seq)>;

/// The cores of this chapter's reference: gathered or masked, plain loops.
SparseCoreFactory reference_sparse_cores(SparseForm form);

/// A DSA layer's weights: MLA's (chapter 6) and the indexer's.
struct DsaWeights {
  std::shared_ptr<const ch06::MlaWeights> mla;  ///< chapter 6's MLA weights
  DsaIndexerWeights indexer;                    ///< the lightning indexer's weights
};

/// Load layer `layer` of a checkpoint: MLA's weights (ch06::load_mla_weights) and the indexer's.
DsaWeights load_dsa_weights(const Checkpoint& ckpt, const DsaConfig& cfg, std::size_t layer);
/// Random weights of both kinds (tests, demonstrations).
DsaWeights random_dsa_weights(const DsaConfig& cfg, Rng& rng);
/// Every tensor of the layer under `model.layers.<layer>.` names (MLA's, then the indexer's).
std::vector<TensorData> dsa_weight_tensors(const DsaWeights& w, const DsaConfig& cfg,
                                           std::size_t layer, DType dtype);

/// How a DSA layer runs.
struct DsaOptions {
  IndexerOptions indexer;  ///< exact or FP8, RoPE layout
  SparseCoreFactory cores = reference_sparse_cores(SparseForm::Gathered);  ///< sparse attention
};

/// One DeepSeek-V3.2 attention layer over B sequences: for every call, the indexer scores each
/// new query against its sequence's indexer key cache, top-k picks min(index_topk, visible)
/// tokens (causal in prefill), and chapter 6's absorbed MLA layer attends to those only (its
/// LatentAttention cores are sparse ones reading the selection).
class DsaLayer {
 public:
  /// A layer over `batch` sequences with empty caches; `opt.cores` must be set.
  DsaLayer(const DsaConfig& cfg, std::shared_ptr<const DsaWeights> w, std::size_t batch,
           DsaOptions opt = {});

  /// The next S tokens of each sequence. x: (B, S, d_model) -> (B, S, d_model).
  Tensor3 forward(const Tensor3& x);

  std::size_t position() const { return mla_->position(); }  ///< tokens cached per sequence
  std::size_t batch() const { return batch_; }               ///< B
  const DsaConfig& config() const { return cfg_; }           ///< the layer's config
  const Indexer& indexer() const { return indexer_; }        ///< the layer's indexer and key caches
  /// The last call's index lists: (B, S, index_topk), -1 padded.
  const Selection& selection() const { return *selection_; }
  /// The last call's index scores: per sequence (S, start + S), 0 after each query's position.
  const std::vector<std::vector<float>>& scores() const { return scores_; }

 private:
  DsaConfig cfg_;
  std::shared_ptr<const DsaWeights> w_;
  std::size_t batch_;
  Indexer indexer_;
  std::shared_ptr<Selection> selection_;
  std::vector<std::vector<float>> scores_;
  std::unique_ptr<ch06::AbsorbedMla> mla_;
};

/// Feed prefill (B, S, d_model) in one call, then decode (B, N, d_model) one token per call, as
/// the golden cases were made. `on_call` (optional) sees the layer after every call.
std::pair<Tensor3, Tensor3> run_prefill_decode(
    DsaLayer& layer, const Tensor3& prefill, const Tensor3& decode,
    const std::function<void(const DsaLayer&)>& on_call = {});

/// @}

}  // namespace mla::ch09
