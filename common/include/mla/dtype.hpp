/// @file dtype.hpp
/// @brief The element types of a safetensors file, and turning stored elements into floats (and
///        back, for the writer).
///
/// The conversions of single numbers are in bf16.hpp; this file applies them to whole tensors as
/// the file stores them (little-endian, any alignment). New stored formats go here: FP8
/// (F8_E4M3, DeepSeek-V3's released weights, with one float scale per 128 × 128 block in a
/// companion `weight_scale_inv` tensor) would be a DType beside BF16, its element conversion in
/// decode_to_float, and the block scales applied by the loader that pairs the two tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mla {

/// @addtogroup loaders
/// @{

/// Element types this reader converts to float. `Other` is any further type the safetensors format
/// defines (I64, U8, F8_E4M3, ...): such a tensor is listed (its spelling is in
/// TensorInfo::dtype_name) but load() refuses it.
enum class DType { F32, F16, BF16, Other };

/// "F32", "F16", "BF16" ("?" for Other: use TensorInfo::dtype_name).
const char* dtype_name(DType t);
/// Bytes per element of F32 (4), F16 (2), BF16 (2); 0 for Other.
std::size_t dtype_size(DType t);

/// The DType and element size of a dtype as a safetensors header spells it ("BF16", "I64", ...):
/// false for a spelling the format does not define. Types other than F32, F16 and BF16 give
/// DType::Other with their true element size, so their byte ranges can still be checked.
bool lookup_dtype(const std::string& spelling, DType& type, std::size_t& element_size);

/// Convert `n` elements of type `t` stored little-endian at `src` (any alignment) into `out`.
/// `t` must not be Other (the caller says which tensor could not be loaded).
void decode_to_float(DType t, const std::uint8_t* src, std::size_t n, float* out);

/// Append `n` floats stored as `t` (F32, or BF16 / F16 rounded to nearest even) to `out`,
/// little-endian. `t` must not be Other.
void encode_from_float(DType t, const float* src, std::size_t n, std::vector<std::uint8_t>& out);

/// @}

}  // namespace mla
