/// @file dtype.hpp
/// @brief The element types of a safetensors file, and turning stored elements into floats (and
///        back, for the writer).
///
/// The conversions of single numbers are in bf16.hpp and fp8.hpp; this file applies them to whole
/// tensors as the file stores them (little-endian, any alignment). The 8-bit floats decode to
/// the values their codes stand for; a block-quantized weight (DeepSeek-V3's release: F8_E4M3
/// with one float scale per 128 × 128 block in a companion `weight_scale_inv` tensor) is turned
/// into its real values by the loader that pairs the two tensors (Checkpoint::load_weight).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mla {

/// @addtogroup loaders
/// @{

/// Element types this reader converts to float: IEEE single, half and bfloat16, and the two 8-bit
/// floats (e4m3fn and e5m2, see fp8.hpp). `Other` is any further type the safetensors format
/// defines (I64, U8, F8_E8M0, ...): such a tensor is listed (its spelling is in
/// TensorInfo::dtype_name) but load() refuses it.
enum class DType { F32, F16, BF16, F8_E4M3, F8_E5M2, Other };

/// "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2" ("?" for Other: use TensorInfo::dtype_name).
const char* dtype_name(DType t);
/// Bytes per element of F32 (4), F16 (2), BF16 (2), the FP8 types (1); 0 for Other.
std::size_t dtype_size(DType t);
/// True for F8_E4M3 and F8_E5M2: stored with a scale elsewhere when they hold a weight.
inline bool is_fp8(DType t) {
  return t == DType::F8_E4M3 || t == DType::F8_E5M2;
}

/// The DType and element size of a dtype as a safetensors header spells it ("BF16", "I64", ...):
/// false for a spelling the format does not define. Types this reader cannot convert give
/// DType::Other with their true element size, so their byte ranges can still be checked.
bool lookup_dtype(const std::string& spelling, DType& type, std::size_t& element_size);

/// Convert `n` elements of type `t` stored little-endian at `src` (any alignment) into `out`.
/// `t` must not be Other (the caller says which tensor could not be loaded).
void decode_to_float(DType t, const std::uint8_t* src, std::size_t n, float* out);

/// Append `n` floats stored as `t` (F32, or BF16 / F16 / F8_E4M3 / F8_E5M2 rounded to nearest
/// even; e4m3 saturates at ±448, e5m2 overflows to ±inf) to `out`, little-endian. `t` must not be
/// Other.
void encode_from_float(DType t, const float* src, std::size_t n, std::vector<std::uint8_t>& out);

/// @}

}  // namespace mla
