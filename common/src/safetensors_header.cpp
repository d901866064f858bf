// The safetensors header, validated field by field: the first job of reading a file, and the
// one that sees every byte an attacker or a truncated download controls.
#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "messages.hpp"
#include "mla/json.hpp"
#include "mla/safetensors.hpp"

namespace mla {

using detail::brief;
using detail::quote_name;

std::size_t TensorInfo::numel() const {
  std::size_t n = 1;
  for (std::size_t d : shape) n *= d;  // cannot overflow: checked when the header was read
  return n;
}

namespace {

/// A header may not be larger than this: real checkpoints' headers are well below 1 MB, and a
/// bigger length is a corrupt file, not a reason to allocate gigabytes.
constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;

/// A non-negative JSON integer as size_t; `false` if it is anything else.
bool json_size(const nlohmann::json& v, std::size_t& out) {
  if (!v.is_number_unsigned()) return false;  // negative ints and floats are not sizes
  const std::uint64_t x = v.get<std::uint64_t>();
  if (x > std::numeric_limits<std::size_t>::max()) return false;
  out = std::size_t(x);
  return true;
}

/// One header entry -> TensorInfo, every field checked against the data section's size.
TensorInfo parse_entry(const std::string& origin, const std::string& name, const nlohmann::json& e,
                       std::size_t data_size) {
  const std::string where = fmt::format("{}: tensor {}", origin, quote_name(name));
  if (!e.is_object())
    throw InputError(fmt::format("{}: header entry is {}, not an object", where, brief(e)));
  TensorInfo t;
  t.name = name;

  auto dt = e.find("dtype");
  if (dt == e.end()) throw InputError(fmt::format("{}: 'dtype' is missing", where));
  if (!dt->is_string())
    throw InputError(fmt::format("{}: 'dtype' is {}, not a string", where, brief(*dt)));
  t.dtype_name = dt->get<std::string>();
  std::size_t elem = 0;
  if (!lookup_dtype(t.dtype_name, t.dtype, elem))
    throw InputError(fmt::format("{}: unknown dtype {}", where, quote_name(t.dtype_name)));

  auto sh = e.find("shape");
  if (sh == e.end()) throw InputError(fmt::format("{}: 'shape' is missing", where));
  if (!sh->is_array())
    throw InputError(fmt::format("{}: 'shape' is {}, not an array", where, brief(*sh)));
  for (const auto& d : *sh) {
    std::size_t n = 0;
    if (!json_size(d, n))
      throw InputError(
          fmt::format("{}: shape entry {} is not a non-negative integer", where, brief(d)));
    t.shape.push_back(n);
  }
  // Absurd dimensions make the product overflow size_t, and a wrapped product could match a
  // small byte range; so compute it with overflow checks (a zero anywhere means an empty tensor).
  std::size_t numel = 1;
  bool overflow = false;
  if (std::find(t.shape.begin(), t.shape.end(), std::size_t(0)) != t.shape.end())
    numel = 0;
  else
    for (std::size_t n : t.shape) overflow = overflow || __builtin_mul_overflow(numel, n, &numel);
  std::size_t nbytes = 0;
  if (overflow || __builtin_mul_overflow(numel, elem, &nbytes))
    throw InputError(fmt::format("{}: shape {} has too many elements", where, shape_str(t.shape)));

  auto off = e.find("data_offsets");
  if (off == e.end()) throw InputError(fmt::format("{}: 'data_offsets' is missing", where));
  if (!off->is_array() || off->size() != 2 || !json_size((*off)[0], t.begin) ||
      !json_size((*off)[1], t.end))
    throw InputError(
        fmt::format("{}: 'data_offsets' is {}, not two non-negative integers [begin, end]", where,
                    brief(*off)));
  if (t.begin > t.end)
    throw InputError(
        fmt::format("{}: data_offsets [{}, {}] are reversed (begin > end)", where, t.begin, t.end));
  if (t.end > data_size)
    throw InputError(
        fmt::format("{}: data_offsets [{}, {}] run past the end of the data section ({} bytes)",
                    where, t.begin, t.end, data_size));
  if (t.end - t.begin != nbytes)
    throw InputError(fmt::format("{}: data_offsets span {} bytes but dtype {} x shape {} needs {}",
                                 where, t.end - t.begin, t.dtype_name, shape_str(t.shape), nbytes));
  return t;
}

/// The tensors must tile the data section exactly, in order of their offsets: no two share a
/// byte, no byte between them or after the last one is left unindexed. The safetensors format
/// asks for this ("the byte buffer needs to be entirely indexed, and cannot contain holes",
/// huggingface/safetensors README), so a file that breaks it was not written by a safetensors
/// writer: two weights aliasing the same bytes, or bytes hidden in a hole, mean corruption or
/// a crafted file, and loading it anyway would hand out silent garbage.
void check_layout(const std::string& origin, const SafetensorsHeader& h) {
  std::vector<const TensorInfo*> order;
  for (const auto& entry : h.tensors) order.push_back(&entry.second);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::size_t expected = 0;  // where the next tensor must begin
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* t : order) {
    if (t->begin < expected)
      throw InputError(fmt::format(
          "{}: tensor {} at data_offsets [{}, {}] overlaps tensor {} (which ends at {})", origin,
          quote_name(t->name), t->begin, t->end, quote_name(previous->name), expected));
    if (t->begin > expected)
      throw InputError(fmt::format(
          "{}: {} bytes before tensor {} at data_offsets [{}, {}] belong to no tensor (a hole in "
          "the data section)",
          origin, t->begin - expected, quote_name(t->name), t->begin, t->end));
    expected = t->end;
    previous = t;
  }
  if (expected != h.data_size)
    throw InputError(fmt::format(
        "{}: the last {} bytes of the {}-byte data section belong to no tensor (truncated header "
        "or extra data)",
        origin, h.data_size - expected, h.data_size));
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const std::uint8_t* bytes, std::size_t size,
                                           const std::string& origin) {
  if (size < 8)
    throw InputError(fmt::format(
        "{}: file has {} bytes, too short for the 8-byte header length of a safetensors file",
        origin, size));
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian u64
  if (n > kMaxHeaderBytes)
    throw InputError(
        fmt::format("{}: header length {} bytes is beyond the 100 MB limit (not a safetensors "
                    "file, or corrupt)",
                    origin, n));
  if (n > size - 8)
    throw InputError(
        fmt::format("{}: header length {} bytes but only {} bytes follow (truncated file?)", origin,
                    n, size - 8));
  SafetensorsHeader h;
  h.data_offset = 8 + std::size_t(n);
  h.data_size = size - h.data_offset;

  const std::string text(reinterpret_cast<const char*>(bytes + 8), std::size_t(n));
  const nlohmann::json header = parse_json(text, origin, {"header", /*unique_keys=*/true});
  if (!header.is_object())
    throw InputError(fmt::format("{}: header is {}, not a JSON object", origin, brief(header)));
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        throw InputError(
            fmt::format("{}: __metadata__ is {}, not an object", origin, brief(entry)));
      for (const auto& [k, v] : entry.items())
        if (!v.is_string())
          throw InputError(fmt::format("{}: __metadata__ field {} is {}, not a string", origin,
                                       quote_name(k), brief(v)));
      h.metadata = entry;
      continue;
    }
    h.tensors.emplace(name, parse_entry(origin, name, entry, h.data_size));
  }
  check_layout(origin, h);
  return h;
}

}  // namespace mla
