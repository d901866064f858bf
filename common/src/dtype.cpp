#include "mla/dtype.hpp"

#include <cassert>
#include <cstring>
#include <map>

#include "mla/bf16.hpp"
#include "mla/fp8.hpp"

// The data section is little-endian; F32 tensors are copied as they are, which needs a
// little-endian machine (every machine this project targets is one).
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dtype.cpp assumes a little-endian machine"
#endif

namespace mla {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::F8_E4M3:
      return "F8_E4M3";
    case DType::F8_E5M2:
      return "F8_E5M2";
    case DType::Other:
      break;
  }
  return "?";
}

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::F8_E4M3:
    case DType::F8_E5M2:
      return 1;
    case DType::Other:
      break;
  }
  return 0;
}

bool lookup_dtype(const std::string& s, DType& t, std::size_t& size) {
  // Element sizes of every dtype the safetensors format defines; the float ones map to DType.
  static const std::map<std::string, std::size_t> kOther = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E8M0", 1}, {"I16", 2}, {"U16", 2},
      {"I32", 4},  {"U32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}, {"C64", 8}};
  if (s == "F32") return t = DType::F32, size = 4, true;
  if (s == "F16") return t = DType::F16, size = 2, true;
  if (s == "BF16") return t = DType::BF16, size = 2, true;
  if (s == "F8_E4M3") return t = DType::F8_E4M3, size = 1, true;
  if (s == "F8_E5M2") return t = DType::F8_E5M2, size = 1, true;
  auto it = kOther.find(s);
  if (it == kOther.end()) return false;
  t = DType::Other;
  size = it->second;
  return true;
}

namespace {

// A 16-bit element from two little-endian bytes (the source may be unaligned).
std::uint16_t u16_at(const std::uint8_t* p) {
  return std::uint16_t(p[0] | (p[1] << 8));
}

}  // namespace

void decode_to_float(DType t, const std::uint8_t* src, std::size_t n, float* out) {
  switch (t) {
    case DType::F32:
      if (n) std::memcpy(out, src, n * 4);  // source may be unaligned: memcpy, not a cast
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) out[i] = bf16_to_float(u16_at(src + 2 * i));
      return;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) out[i] = f16_to_float(u16_at(src + 2 * i));
      return;
    case DType::F8_E4M3:
      for (std::size_t i = 0; i < n; ++i) out[i] = e4m3_to_float(src[i]);
      return;
    case DType::F8_E5M2:
      for (std::size_t i = 0; i < n; ++i) out[i] = e5m2_to_float(src[i]);
      return;
    case DType::Other:
      break;
  }
  assert(false && "decode_to_float: no conversion for DType::Other");
}

void encode_from_float(DType t, const float* src, std::size_t n, std::vector<std::uint8_t>& out) {
  assert(t != DType::Other && "encode_from_float: no conversion for DType::Other");
  out.reserve(out.size() + n * dtype_size(t));
  for (std::size_t i = 0; i < n; ++i) {
    if (t == DType::F32) {
      const std::uint32_t u = float_bits(src[i]);
      for (int b = 0; b < 4; ++b) out.push_back(std::uint8_t(u >> (8 * b)));
    } else if (t == DType::F8_E4M3) {
      out.push_back(float_to_e4m3(src[i]));
    } else if (t == DType::F8_E5M2) {
      out.push_back(float_to_e5m2(src[i]));
    } else {
      const std::uint16_t h = t == DType::BF16 ? float_to_bf16(src[i]) : float_to_f16(src[i]);
      out.push_back(std::uint8_t(h & 0xFF));
      out.push_back(std::uint8_t(h >> 8));
    }
  }
}

}  // namespace mla
