/// @file checkpoint.hpp
/// @brief A checkpoint as models ship it: one .safetensors file, or shards listed by a
///        `model.safetensors.index.json`; one set of accessors over either.
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mla/config.hpp"
#include "mla/safetensors.hpp"

namespace mla {

/// @addtogroup loaders
/// @{

/// The contents of a `model.safetensors.index.json`: which shard file holds each tensor.
struct SafetensorsIndex {
  nlohmann::json metadata = nlohmann::json::object();  ///< the index's "metadata" object, if any
  std::map<std::string, std::string> weight_map;       ///< tensor name -> shard file name
  /// Distinct shard file names, sorted.
  std::vector<std::string> shards() const;
};

/// Parse and validate the text of an index file: a JSON object with a "weight_map" object of
/// string values; shard names relative (not absolute, no ".." part), no duplicate tensor names.
/// InputError naming `origin` and the problem.
SafetensorsIndex parse_safetensors_index(const std::string& text, const std::string& origin);

/// A checkpoint: one .safetensors file, or the shards a model.safetensors.index.json names.
/// Movable, not copyable; the same accessors as SafeTensors.
class Checkpoint {
 public:
  /// `path` is a .safetensors file, a *.index.json, or a folder holding
  /// model.safetensors.index.json or model.safetensors. Shard names in an index are relative to
  /// the index's folder; every shard must exist and hold the tensors the index maps to it.
  static Checkpoint open(const std::string& path);
  /// A checkpoint from a parsed index and its shards already open, keyed by shard file name
  /// (what open() does after opening the files; used directly by the index fuzzer).
  static Checkpoint from_index(const SafetensorsIndex& index,
                               std::map<std::string, SafeTensors> shards,
                               const std::string& origin);
  /// A checkpoint of a single file.
  static Checkpoint from_file(SafeTensors file);

  /// The path it was opened from (the index file for a sharded checkpoint).
  const std::string& origin() const { return origin_; }
  /// True if some file of the checkpoint holds `name`.
  bool contains(const std::string& name) const;
  /// The header entry of `name`, from the shard that holds it.
  const TensorInfo& info(const std::string& name) const;
  /// All tensor names, sorted.
  std::vector<std::string> names() const;
  /// A single file's "__metadata__", or a sharded checkpoint's index "metadata".
  const nlohmann::json& metadata() const { return metadata_; }
  /// As SafeTensors::load, from the shard that holds `name`.
  std::vector<float> load(const std::string& name) const;
  /// As SafeTensors::load_matrix: shape must be [rows, cols].
  Mat load_matrix(const std::string& name, std::size_t rows, std::size_t cols) const;
  /// As SafeTensors::load_vector: shape must be [n].
  Vec load_vector(const std::string& name, std::size_t n) const;
  /// As SafeTensors::load_tensor3: any 3-d tensor.
  Tensor3 load_tensor3(const std::string& name) const;
  /// As SafeTensors::load_into(name, shape, out): `name` must have shape `shape`; `out` (an
  /// xtensor of that rank) is resized to it and filled.
  template <class T>
  void load_into(const std::string& name, const std::vector<std::size_t>& shape, T& out) const {
    file_of(name).load_into(name, shape, out);
  }
  /// A weight as a model computes with it: `name` must have shape `shape`; `out` (an xtensor of
  /// that rank) is resized to it and filled with float values.
  ///
  /// F32, F16 and BF16 tensors are converted as they are. A block-quantized FP8 weight (F8_E4M3
  /// or F8_E5M2, 2-d, `quant` given) is dequantized with its companion `name + "_scale_inv"`
  /// (F32, one entry per quant->block_rows × quant->block_cols block, blocks at the bottom and
  /// right edges partial): `W[i][j] = fp8(W)[i][j] · scale_inv[i / block_rows][j / block_cols]`
  /// (multiplied, despite the name; DeepSeek-V3 `inference/kernel.py` weight_dequant), exactly,
  /// in float. The scale may be in another shard. InputError, naming the tensor: an FP8 weight
  /// without its scale or without a quantization_config, a scale of the wrong dtype or shape, a
  /// scale that is not finite and positive, a scale beside a weight that is not FP8.
  template <class T>
  void load_weight(const std::string& name, const std::vector<std::size_t>& shape, T& out,
                   const std::optional<Fp8Quantization>& quant) const {
    check_weight(name, shape, quant);
    out.resize(shape);
    load_weight_into(name, shape, out.data(), quant);
  }
  /// load_weight into `out`, which holds the product of `shape` floats.
  void load_weight_into(const std::string& name, const std::vector<std::size_t>& shape, float* out,
                        const std::optional<Fp8Quantization>& quant) const;
  /// Every check of load_weight, before anything is allocated or read.
  void check_weight(const std::string& name, const std::vector<std::size_t>& shape,
                    const std::optional<Fp8Quantization>& quant) const;
  /// The open file holding `name`.
  const SafeTensors& file_of(const std::string& name) const;
  /// How many files the checkpoint spans (1 for a single file).
  std::size_t num_files() const { return files_.size(); }

 private:
  Checkpoint() = default;
  std::string origin_;
  nlohmann::json metadata_ = nlohmann::json::object();
  std::vector<SafeTensors> files_;
  std::map<std::string, std::size_t> where_;  // tensor name -> index into files_
};

/// @}

}  // namespace mla
