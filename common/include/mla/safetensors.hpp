/// @file safetensors.hpp
/// @brief Reading one safetensors file: its header validated, its data memory-mapped, BF16 and
///        F16 turned into float. A sharded checkpoint (`model.safetensors.index.json`) is in
///        checkpoint.hpp, the writer tests use in safetensors_writer.hpp, the element types in
///        dtype.hpp.
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

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "mla/dtype.hpp"
#include "mla/errors.hpp"
#include "mla/rows.hpp"  // shape_str
#include "mla/tensor.hpp"

namespace mla {

/// @defgroup loaders Loaders (safetensors checkpoints, Hugging Face config.json)
/// @brief Reading real checkpoint files with every field validated (library mla_io).
/// @{

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

/// A file's header, validated: what parse_safetensors_header finds.
struct SafetensorsHeader {
  std::size_t data_offset = 0;  ///< where the data section starts: 8 + the header length
  std::size_t data_size = 0;    ///< bytes of the data section, which the tensors tile exactly
  std::map<std::string, TensorInfo> tensors;           ///< the header's entries, by name
  nlohmann::json metadata = nlohmann::json::object();  ///< "__metadata__", string -> string
};

/// Validate the header of the `size` bytes of a whole safetensors file: the length field, the
/// JSON (no key twice), every entry's dtype, shape and data_offsets against the data section,
/// and that the tensors tile the data section with no overlap and no hole. InputError naming
/// `origin`, the tensor and what is wrong.
SafetensorsHeader parse_safetensors_header(const std::uint8_t* bytes, std::size_t size,
                                           const std::string& origin);

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

  /// The header entry of `name`, which must have shape `shape` and a dtype load() converts.
  /// InputError "<file>: tensor '<name>' has shape [..], expected [..]", or naming its dtype.
  const TensorInfo& expect(const std::string& name, const std::vector<std::size_t>& shape) const;

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
  /// The tensor, which must have shape `shape` (checked by expect() before anything is
  /// allocated), into `out`: an xtensor of that rank (Vec, Mat, Tensor3), resized to `shape`.
  /// What a list of weights (ch06::for_each_weight) loads each of its tensors with.
  template <class T>
  void load_into(const std::string& name, const std::vector<std::size_t>& shape, T& out) const {
    expect(name, shape);
    out.resize(shape);
    load_into(name, out.data());
  }

 private:
  struct Impl;
  explicit SafeTensors(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// @}

}  // namespace mla
