/// @file safetensors.hpp
/// @brief Reading (and, for tests, writing) safetensors checkpoints: one file, memory-mapped, or a
///        sharded checkpoint through `model.safetensors.index.json`; BF16 and F16 turned into
///        float.
///
/// A safetensors file is three parts (https://github.com/huggingface/safetensors, "Format"):
///
///     8 bytes   N, the header length, unsigned little-endian
///     N bytes   a JSON object: name -> {"dtype": "BF16", "shape": [r, c], "data_offsets": [b, e]}
///               plus an optional "__metadata__" object of string -> string
///     the rest  the data section; tensor bytes are [b, e) of it, row-major, little-endian
///
/// Every field of the header is checked when the file is opened, so a truncated download or a
/// hand-edited header gives an mla::InputError naming the file, the tensor and what is wrong,
/// never a crash or a silently wrong number.
#pragma once

#include "mla/rows.hpp"  // shape_str

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "mla/program.hpp"
#include "mla/tensor.hpp"

namespace mla {

/// @defgroup loaders Loaders (safetensors checkpoints, Hugging Face config.json)
/// @brief Reading real checkpoint files with every field validated.
/// @{

/// Element types this reader converts to float. `Other` is any further type the safetensors format
/// defines (I64, U8, F8_E4M3, ...): such a tensor is listed (its spelling is in
/// TensorInfo::dtype_name) but load() refuses it.
enum class DType { F32, F16, BF16, Other };

/// "F32", "F16", "BF16" ("?" for Other: use TensorInfo::dtype_name).
const char* dtype_name(DType t);
/// Bytes per element of F32 (4), F16 (2), BF16 (2); 0 for Other.
std::size_t dtype_size(DType t);

/// bfloat16 -> float: exact (bf16 is the upper half of a float32).
float bf16_to_float(std::uint16_t bits);
/// float -> bfloat16, rounding to nearest, ties to even; NaN stays a (quiet) NaN, ±inf stay ±inf.
std::uint16_t float_to_bf16(float x);
/// IEEE half -> float: exact for normals, subnormals, ±0, ±inf and NaN.
float f16_to_float(std::uint16_t bits);
/// float -> IEEE half, rounding to nearest, ties to even; overflow gives ±inf, NaN stays NaN.
std::uint16_t float_to_f16(float x);

/// One tensor as the header describes it.
struct TensorInfo {
  std::string name;                ///< the header's key
  DType dtype = DType::F32;        ///< Other for any dtype but F32, F16, BF16 (see dtype_name)
  std::vector<std::size_t> shape;  ///< [] for a scalar
  std::size_t begin = 0,           ///< first byte, from the start of the data section
      end = 0;                     ///< one past the last byte: the range is [begin, end)
  std::string dtype_name;          ///< as the file spells it: "BF16", "I64", "F8_E4M3", ...
  /// Number of elements: the product of shape (1 for a scalar).
  std::size_t numel() const;
};


/// One safetensors file, memory-mapped read-only (or, from from_bytes, an owned buffer).
/// Movable, not copyable. Every accessor that takes a name throws InputError
/// "<file>: no tensor '<name>'" if there is none.
class SafeTensors {
 public:
  /// Map the file at `path` and validate its whole header. InputError on any problem.
  static SafeTensors open(const std::string& path);
  /// The same from bytes in memory (tests, fuzzing); `origin` names them in error messages.
  static SafeTensors from_bytes(std::vector<std::uint8_t> bytes, const std::string& origin);

  /// Takes over the mapping (or buffer); the moved-from object may only be destroyed or
  /// assigned to.
  SafeTensors(SafeTensors&&) noexcept;
  /// Takes over the mapping (or buffer), unmapping (or freeing) this object's own.
  SafeTensors& operator=(SafeTensors&&) noexcept;
  SafeTensors(const SafeTensors&) = delete;
  SafeTensors& operator=(const SafeTensors&) = delete;
  ~SafeTensors();

  /// The file name (or from_bytes origin) that error messages start with.
  const std::string& origin() const;
  /// True if the header has a tensor `name`.
  bool contains(const std::string& name) const;
  /// The header entry of `name`: dtype, shape, byte range.
  const TensorInfo& info(const std::string& name) const;
  /// Tensor names in the order of their data (ascending begin offset, then name).
  std::vector<std::string> names() const;
  /// The "__metadata__" object (string -> string), or an empty object.
  const nlohmann::json& metadata() const;

  /// The tensor converted to float, row-major, numel() values. InputError for a dtype other than
  /// F32, F16 or BF16.
  std::vector<float> load(const std::string& name) const;
  /// A 2-d tensor that must have shape [rows, cols]; the error names the tensor, expected and
  /// found.
  Mat load_matrix(const std::string& name, std::size_t rows, std::size_t cols) const;
  /// A 1-d tensor that must have shape [n].
  Vec load_vector(const std::string& name, std::size_t n) const;
  /// Any 3-d tensor (e.g. the golden inputs [batch, S, hidden]).
  Tensor3 load_tensor3(const std::string& name) const;
  /// Convert the tensor into `out`, which must hold numel() floats.
  void load_into(const std::string& name, float* out) const;

 private:
  struct Impl;
  explicit SafeTensors(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

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

// ---------------------------------------------------------------------------------------------
// Writing (tests and examples make their own files with these)
// ---------------------------------------------------------------------------------------------

/// One tensor to write: values are float and stored as `dtype` (F32, BF16 or F16; rounding to
/// nearest even). values.size() must equal the product of shape.
struct TensorData {
  std::string name;                ///< its key in the header
  DType dtype = DType::F32;        ///< how values are stored: F32, BF16 or F16
  std::vector<std::size_t> shape;  ///< [] for a scalar
  std::vector<float> values;       ///< row-major, as many as the product of shape
};

/// The bytes of a valid safetensors file holding `tensors` (in that order) and `metadata`.
std::vector<std::uint8_t> safetensors_bytes(
    const std::vector<TensorData>& tensors,
    const std::map<std::string, std::string>& metadata = {});
/// Write safetensors_bytes(...) to `path`.
void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

/// Raw bytes "length + header + data" with the true header length, whatever the header says:
/// for tests of malformed files.
std::vector<std::uint8_t> raw_safetensors_bytes(const std::string& header,
                                                const std::vector<std::uint8_t>& data);
/// Write `bytes` to `path` as they are.
void write_bytes(const std::string& path, const std::vector<std::uint8_t>& bytes);

/// @}

}  // namespace mla
