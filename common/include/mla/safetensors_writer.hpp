/// @file safetensors_writer.hpp
/// @brief Writing safetensors files: tests and examples make their own checkpoints (and, for
///        the reader's tests, deliberately broken ones) with these.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mla/dtype.hpp"

namespace mla {

/// @addtogroup loaders
/// @{

/// One tensor to write: values are float and stored as `dtype` (F32, BF16 or F16; rounding to
/// nearest even). values.size() must equal the product of shape.
struct TensorData {
  std::string name;                ///< its key in the header
  DType dtype = DType::F32;        ///< how values are stored: F32, BF16 or F16
  std::vector<std::size_t> shape;  ///< [] for a scalar
  std::vector<float> values;       ///< row-major, as many as the product of shape
};

/// The bytes of a valid safetensors file holding `tensors` (in that order) and `metadata`.
/// InputError for a name used twice (or "__metadata__"), a shape that does not match the
/// number of values, or a dtype other than F32, F16 and BF16.
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
