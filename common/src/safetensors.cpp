#include "mla/safetensors.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// The data section is little-endian; F32 tensors are copied as they are, which needs a
// little-endian machine (every machine this project targets is one).
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.cpp assumes a little-endian machine"
#endif

namespace mla {

namespace fs = std::filesystem;

// =============================================================================================
// Element types and their conversion to float
// =============================================================================================

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
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
    case DType::Other:
      break;
  }
  return 0;
}

namespace {

std::uint32_t float_bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

float bits_float(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

}  // namespace

float bf16_to_float(std::uint16_t bits) {
  return bits_float(std::uint32_t(bits) << 16);
}

std::uint16_t float_to_bf16(float x) {
  const std::uint32_t u = float_bits(x);
  // NaN: keep sign and top payload bits, and set the quiet bit so truncation cannot make it inf.
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return std::uint16_t((u >> 16) | 0x0040u);
  // Round to nearest, ties to even: add 0x7FFF plus the lowest kept bit, then truncate. A carry
  // out of the mantissa correctly bumps the exponent (and the largest floats round up to inf).
  const std::uint32_t lsb = (u >> 16) & 1u;
  return std::uint16_t((u + 0x7FFFu + lsb) >> 16);
}

float f16_to_float(std::uint16_t bits) {
  const std::uint32_t sign = std::uint32_t(bits & 0x8000u) << 16;
  const std::uint32_t exp = (bits >> 10) & 0x1Fu;
  const std::uint32_t mant = bits & 0x3FFu;
  if (exp == 0) {
    // ±0 and subnormals: mant · 2^-24, exact in float.
    const float v = std::ldexp(float(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7F800000u | (mant << 13));  // inf, or NaN + payload
  return bits_float(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

std::uint16_t float_to_f16(float x) {
  const std::uint32_t all = float_bits(x);
  const std::uint16_t sign = std::uint16_t((all >> 16) & 0x8000u);
  const std::uint32_t u = all & 0x7FFFFFFFu;
  if (u > 0x7F800000u) return std::uint16_t(sign | 0x7E00u | ((u >> 13) & 0x3FFu));  // quiet NaN
  // 65520 is halfway between 65504 (the largest half) and 65536; the tie goes to the even
  // neighbour, which is 65536 = inf.
  if (u >= 0x477FF000u) return std::uint16_t(sign | 0x7C00u);
  if (u < 0x38800000u) {  // below 2^-14: a half subnormal (units of 2^-24) or zero
    const std::uint32_t exp = u >> 23;
    if (exp < 102) return sign;  // below 2^-25, half the smallest subnormal: rounds to 0
    const std::uint32_t m = (u & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126 - exp;  // 14..24
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return std::uint16_t(sign | r);
  }
  // Normal: rebias the exponent from 127 to 15, keep 10 mantissa bits, round the other 13.
  const std::uint32_t r = u - 0x38000000u;
  std::uint32_t h = r >> 13;
  const std::uint32_t rem = r & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return std::uint16_t(sign | h);
}

std::size_t TensorInfo::numel() const {
  std::size_t n = 1;
  for (std::size_t d : shape) n *= d;  // cannot overflow: checked when the header was read
  return n;
}

// =============================================================================================
// Header validation
// =============================================================================================

namespace {

/// A header may not be larger than this: real checkpoints' headers are well below 1 MB, and a
/// bigger length is a corrupt file, not a reason to allocate gigabytes.
constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;

/// Names and JSON texts can be long; error messages show at most this much of them.
std::string quote_name(const std::string& s) {
  constexpr std::size_t kMax = 120;
  if (s.size() <= kMax) return "'" + s + "'";
  return "'" + s.substr(0, kMax) + "...' (" + std::to_string(s.size()) + " characters)";
}

/// A JSON value in an error message, cut short (never dumped whole: it may be huge).
std::string brief(const nlohmann::json& v) {
  if (v.is_structured()) return v.is_array() ? "an array" : "an object";
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 60) + "...";
  return s;
}

/// Parse JSON text, rejecting a key that appears twice in the same object (nlohmann would keep
/// the last silently: a header naming a tensor twice is corrupt, not a choice).
nlohmann::json parse_json_unique_keys(const std::string& text, const std::string& origin,
                                      const std::string& what) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  auto cb = [&](int /*depth*/, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (ev == E::object_start) {
      keys.emplace_back();
    } else if (ev == E::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == E::key && !keys.empty() && duplicate.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second) duplicate = k;
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text, cb);
  } catch (const nlohmann::json::exception& e) {
    // nlohmann's message quotes the token it choked on, which can be most of the header.
    std::string detail = e.what();
    if (detail.size() > 200) detail = detail.substr(0, 200) + "...";
    throw InputError(origin + ": " + what + " is not well-formed JSON (" + detail + ")");
  }
  if (!duplicate.empty())
    throw InputError(origin + ": " + what + " names " + quote_name(duplicate) + " twice");
  return j;
}

/// Element sizes of every dtype the safetensors format defines; the float ones map to DType.
bool lookup_dtype(const std::string& s, DType& t, std::size_t& size) {
  static const std::map<std::string, std::size_t> kOther = {
      {"BOOL", 1},    {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"F8_E8M0", 1}, {"I16", 2}, {"U16", 2}, {"I32", 4},     {"U32", 4},
      {"F64", 8},     {"I64", 8}, {"U64", 8}, {"C64", 8}};
  if (s == "F32") return t = DType::F32, size = 4, true;
  if (s == "F16") return t = DType::F16, size = 2, true;
  if (s == "BF16") return t = DType::BF16, size = 2, true;
  auto it = kOther.find(s);
  if (it == kOther.end()) return false;
  t = DType::Other;
  size = it->second;
  return true;
}

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
  const std::string where = origin + ": tensor " + quote_name(name);
  if (!e.is_object()) throw InputError(where + ": header entry is " + brief(e) + ", not an object");
  TensorInfo t;
  t.name = name;

  auto dt = e.find("dtype");
  if (dt == e.end()) throw InputError(where + ": 'dtype' is missing");
  if (!dt->is_string()) throw InputError(where + ": 'dtype' is " + brief(*dt) + ", not a string");
  t.dtype_name = dt->get<std::string>();
  std::size_t elem = 0;
  if (!lookup_dtype(t.dtype_name, t.dtype, elem))
    throw InputError(where + ": unknown dtype " + quote_name(t.dtype_name));

  auto sh = e.find("shape");
  if (sh == e.end()) throw InputError(where + ": 'shape' is missing");
  if (!sh->is_array()) throw InputError(where + ": 'shape' is " + brief(*sh) + ", not an array");
  for (const auto& d : *sh) {
    std::size_t n = 0;
    if (!json_size(d, n))
      throw InputError(where + ": shape entry " + brief(d) + " is not a non-negative integer");
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
    throw InputError(where + ": shape " + shape_str(t.shape) + " has too many elements");

  auto off = e.find("data_offsets");
  if (off == e.end()) throw InputError(where + ": 'data_offsets' is missing");
  if (!off->is_array() || off->size() != 2 || !json_size((*off)[0], t.begin) ||
      !json_size((*off)[1], t.end))
    throw InputError(where + ": 'data_offsets' is " + brief(*off) +
                     ", not two non-negative integers [begin, end]");
  if (t.begin > t.end)
    throw InputError(where + ": data_offsets [" + std::to_string(t.begin) + ", " +
                     std::to_string(t.end) + "] are reversed (begin > end)");
  if (t.end > data_size)
    throw InputError(where + ": data_offsets [" + std::to_string(t.begin) + ", " +
                     std::to_string(t.end) + "] run past the end of the data section (" +
                     std::to_string(data_size) + " bytes)");
  if (t.end - t.begin != nbytes)
    throw InputError(where + ": data_offsets span " + std::to_string(t.end - t.begin) +
                     " bytes but dtype " + t.dtype_name + " x shape " + shape_str(t.shape) +
                     " needs " + std::to_string(nbytes));
  return t;
}

}  // namespace

// =============================================================================================
// SafeTensors
// =============================================================================================

/// What a SafeTensors holds: the file's bytes (mapped or owned) and its validated header. Behind
/// a pointer, so the public header needs no POSIX headers and a move copies one pointer.
struct SafeTensors::Impl {
  std::string origin;                  ///< path or from_bytes origin: what every error starts with
  std::vector<std::uint8_t> owned;     ///< from_bytes: the file's bytes
  void* map = nullptr;                 ///< open: the read-only mapping of the whole file
  std::size_t map_len = 0;             ///< bytes mapped, for munmap
  const std::uint8_t* data = nullptr;  ///< start of the data section
  std::size_t data_size = 0;           ///< bytes of the data section, which the tensors tile
  std::map<std::string, TensorInfo> tensors;           ///< the header's entries, by name
  nlohmann::json metadata = nlohmann::json::object();  ///< "__metadata__", string -> string

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (map) ::munmap(map, map_len);
  }

  /// Validate the whole file: `bytes` points at `size` bytes that live as long as *this.
  void parse(const std::uint8_t* bytes, std::size_t size) {
    if (size < 8)
      throw InputError(origin + ": file has " + std::to_string(size) +
                       " bytes, too short for the 8-byte header length of a safetensors file");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian u64
    if (n > kMaxHeaderBytes)
      throw InputError(origin + ": header length " + std::to_string(n) +
                       " bytes is beyond the 100 MB limit (not a safetensors file, or corrupt)");
    if (n > size - 8)
      throw InputError(origin + ": header length " + std::to_string(n) + " bytes but only " +
                       std::to_string(size - 8) + " bytes follow (truncated file?)");
    data = bytes + 8 + n;
    data_size = size - 8 - std::size_t(n);

    const std::string text(reinterpret_cast<const char*>(bytes + 8), std::size_t(n));
    const nlohmann::json header = parse_json_unique_keys(text, origin, "header");
    if (!header.is_object())
      throw InputError(origin + ": header is " + brief(header) + ", not a JSON object");
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        if (!entry.is_object())
          throw InputError(origin + ": __metadata__ is " + brief(entry) + ", not an object");
        for (const auto& [k, v] : entry.items())
          if (!v.is_string())
            throw InputError(origin + ": __metadata__ field " + quote_name(k) + " is " + brief(v) +
                             ", not a string");
        metadata = entry;
        continue;
      }
      tensors.emplace(name, parse_entry(origin, name, entry, data_size));
    }
    check_layout();
  }

  /// The tensors must tile the data section exactly, in order of their offsets: no two share a
  /// byte, no byte between them or after the last one is left unindexed. The safetensors format
  /// asks for this ("the byte buffer needs to be entirely indexed, and cannot contain holes",
  /// huggingface/safetensors README), so a file that breaks it was not written by a safetensors
  /// writer: two weights aliasing the same bytes, or bytes hidden in a hole, mean corruption or
  /// a crafted file, and loading it anyway would hand out silent garbage.
  void check_layout() const {
    std::vector<const TensorInfo*> order;
    for (const auto& entry : tensors) order.push_back(&entry.second);
    std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    std::size_t expected = 0;  // where the next tensor must begin
    const TensorInfo* previous = nullptr;
    for (const TensorInfo* t : order) {
      const std::string range =
          "[" + std::to_string(t->begin) + ", " + std::to_string(t->end) + "]";
      if (t->begin < expected)
        throw InputError(origin + ": tensor " + quote_name(t->name) + " at data_offsets " + range +
                         " overlaps tensor " + quote_name(previous->name) + " (which ends at " +
                         std::to_string(expected) + ")");
      if (t->begin > expected)
        throw InputError(origin + ": " + std::to_string(t->begin - expected) +
                         " bytes before tensor " + quote_name(t->name) + " at data_offsets " +
                         range + " belong to no tensor (a hole in the data section)");
      expected = t->end;
      previous = t;
    }
    if (expected != data_size)
      throw InputError(origin + ": the last " + std::to_string(data_size - expected) +
                       " bytes of the " + std::to_string(data_size) +
                       "-byte data section belong to no tensor (truncated header or extra data)");
  }

  /// The entry of `name`; InputError "<origin>: no tensor '<name>'" if there is none.
  const TensorInfo& info(const std::string& name) const {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw InputError(origin + ": no tensor " + quote_name(name));
    return it->second;
  }
};

SafeTensors::SafeTensors(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafeTensors::SafeTensors(SafeTensors&&) noexcept = default;
SafeTensors& SafeTensors::operator=(SafeTensors&&) noexcept = default;
SafeTensors::~SafeTensors() = default;

SafeTensors SafeTensors::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->origin = path;
  // O_NONBLOCK: opening a FIFO by mistake must not hang (fstat then rejects it).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw InputError(path + ": cannot open file (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(path + ": not a regular file");
  }
  const std::size_t size = std::size_t(st.st_size);
  if (size >= 8) {  // mmap of 0 bytes is an error; short files are reported by parse()
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw InputError(path + ": cannot map file (" + std::strerror(err) + ")");
    }
    impl->map = p;
    impl->map_len = size;
  }
  ::close(fd);  // the mapping stays valid without the descriptor
  static const std::uint8_t kNothing[1] = {0};
  impl->parse(impl->map ? static_cast<const std::uint8_t*>(impl->map) : kNothing, size);
  return SafeTensors(std::move(impl));
}

SafeTensors SafeTensors::from_bytes(std::vector<std::uint8_t> bytes, const std::string& origin) {
  auto impl = std::make_unique<Impl>();
  impl->origin = origin;
  impl->owned = std::move(bytes);
  impl->parse(impl->owned.data(), impl->owned.size());
  return SafeTensors(std::move(impl));
}

const std::string& SafeTensors::origin() const {
  return impl_->origin;
}

bool SafeTensors::contains(const std::string& name) const {
  return impl_->tensors.count(name) != 0;
}

const TensorInfo& SafeTensors::info(const std::string& name) const {
  return impl_->info(name);
}

std::vector<std::string> SafeTensors::names() const {
  std::vector<const TensorInfo*> v;
  for (const auto& kv : impl_->tensors) v.push_back(&kv.second);
  std::stable_sort(v.begin(), v.end(),
                   [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  std::vector<std::string> out;
  for (const TensorInfo* t : v) out.push_back(t->name);
  return out;
}

const nlohmann::json& SafeTensors::metadata() const {
  return impl_->metadata;
}

void SafeTensors::load_into(const std::string& name, float* out) const {
  const TensorInfo& t = impl_->info(name);
  const std::uint8_t* src = impl_->data + t.begin;
  const std::size_t n = t.numel();
  switch (t.dtype) {
    case DType::F32:
      if (n) std::memcpy(out, src, n * 4);  // source may be unaligned: memcpy, not a cast
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i)
        out[i] = bf16_to_float(std::uint16_t(src[2 * i] | (src[2 * i + 1] << 8)));
      return;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i)
        out[i] = f16_to_float(std::uint16_t(src[2 * i] | (src[2 * i + 1] << 8)));
      return;
    case DType::Other:
      break;
  }
  throw InputError(impl_->origin + ": tensor " + quote_name(name) + " has dtype " + t.dtype_name +
                   "; only F32, F16 and BF16 can be loaded as float");
}

std::vector<float> SafeTensors::load(const std::string& name) const {
  const TensorInfo& t = impl_->info(name);
  if (t.dtype == DType::Other) load_into(name, nullptr);  // throws the dtype error
  std::vector<float> v(t.numel());
  load_into(name, v.data());
  return v;
}

namespace {

void check_shape(const std::string& origin, const TensorInfo& t,
                 const std::vector<std::size_t>& expected) {
  if (t.shape != expected)
    throw InputError(origin + ": tensor " + quote_name(t.name) + " has shape " +
                     shape_str(t.shape) + ", expected " + shape_str(expected));
}

}  // namespace

Mat SafeTensors::load_matrix(const std::string& name, std::size_t rows, std::size_t cols) const {
  check_shape(impl_->origin, impl_->info(name), {rows, cols});
  if (info(name).dtype == DType::Other) load_into(name, nullptr);
  Mat m = xt::empty<float>({rows, cols});
  load_into(name, m.data());
  return m;
}

Vec SafeTensors::load_vector(const std::string& name, std::size_t n) const {
  check_shape(impl_->origin, impl_->info(name), {n});
  if (info(name).dtype == DType::Other) load_into(name, nullptr);
  Vec v = xt::empty<float>({n});
  load_into(name, v.data());
  return v;
}

Tensor3 SafeTensors::load_tensor3(const std::string& name) const {
  const TensorInfo& t = impl_->info(name);
  if (t.shape.size() != 3)
    throw InputError(impl_->origin + ": tensor " + quote_name(name) + " has shape " +
                     shape_str(t.shape) + ", expected 3 dimensions");
  if (t.dtype == DType::Other) load_into(name, nullptr);
  Tensor3 x = xt::empty<float>({t.shape[0], t.shape[1], t.shape[2]});
  load_into(name, x.data());
  return x;
}

// =============================================================================================
// Sharded checkpoints
// =============================================================================================

std::vector<std::string> SafetensorsIndex::shards() const {
  std::set<std::string> s;
  for (const auto& kv : weight_map) s.insert(kv.second);
  return {s.begin(), s.end()};
}

SafetensorsIndex parse_safetensors_index(const std::string& text, const std::string& origin) {
  const nlohmann::json j = parse_json_unique_keys(text, origin, "index");
  if (!j.is_object()) throw InputError(origin + ": index is " + brief(j) + ", not a JSON object");
  SafetensorsIndex idx;
  if (auto m = j.find("metadata"); m != j.end() && !m->is_null()) {
    if (!m->is_object())
      throw InputError(origin + ": 'metadata' is " + brief(*m) + ", not an object");
    idx.metadata = *m;
  }
  auto wm = j.find("weight_map");
  if (wm == j.end()) throw InputError(origin + ": 'weight_map' is missing");
  if (!wm->is_object())
    throw InputError(origin + ": 'weight_map' is " + brief(*wm) + ", not an object");
  if (wm->empty()) throw InputError(origin + ": 'weight_map' is empty");
  for (const auto& [name, v] : wm->items()) {
    const std::string where = origin + ": weight_map entry " + quote_name(name);
    if (!v.is_string()) throw InputError(where + " is " + brief(v) + ", not a shard file name");
    const std::string shard = v.get<std::string>();
    // Shard names are relative to the index's folder; refuse anything that could point outside.
    if (shard.empty()) throw InputError(where + " names an empty shard file");
    const fs::path p(shard);
    if (p.is_absolute() || shard.find('\0') != std::string::npos)
      throw InputError(where + ": shard " + quote_name(shard) + " must be a relative file name");
    for (const auto& part : p)
      if (part == "..")
        throw InputError(where + ": shard " + quote_name(shard) + " must not contain '..'");
    idx.weight_map.emplace(name, shard);
  }
  return idx;
}

Checkpoint Checkpoint::from_file(SafeTensors file) {
  Checkpoint c;
  c.origin_ = file.origin();
  c.metadata_ = file.metadata();
  for (const std::string& n : file.names()) c.where_.emplace(n, 0);
  c.files_.push_back(std::move(file));
  return c;
}

Checkpoint Checkpoint::from_index(const SafetensorsIndex& index,
                                  std::map<std::string, SafeTensors> shards,
                                  const std::string& origin) {
  Checkpoint c;
  c.origin_ = origin;
  c.metadata_ = index.metadata;
  std::map<std::string, std::size_t> slot;  // shard file name -> index into files_
  for (const auto& [name, shard] : index.weight_map) {
    auto s = slot.find(shard);
    if (s == slot.end()) {
      auto f = shards.find(shard);
      if (f == shards.end())
        throw InputError(origin + ": shard " + quote_name(shard) + " (holding tensor " +
                         quote_name(name) + ") was not opened");
      s = slot.emplace(shard, c.files_.size()).first;
      c.files_.push_back(std::move(f->second));
    }
    if (!c.files_[s->second].contains(name))
      throw InputError(origin + ": tensor " + quote_name(name) + " is mapped to shard " +
                       quote_name(shard) + ", but that file has no such tensor");
    c.where_.emplace(name, s->second);
  }
  return c;
}

namespace {

Checkpoint open_index(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError(path + ": cannot open file");
  std::ostringstream ss;
  ss << f.rdbuf();
  const SafetensorsIndex idx = parse_safetensors_index(ss.str(), path);
  const fs::path folder = fs::path(path).parent_path();
  std::map<std::string, SafeTensors> shards;
  for (const std::string& shard : idx.shards()) {
    const fs::path file = folder / shard;
    std::error_code ec;
    if (!fs::is_regular_file(file, ec))
      throw InputError(path + ": shard " + quote_name(shard) + " does not exist (looked for " +
                       file.string() + ")");
    shards.emplace(shard, SafeTensors::open(file.string()));
  }
  return Checkpoint::from_index(idx, std::move(shards), path);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path index = fs::path(path) / "model.safetensors.index.json";
    const fs::path single = fs::path(path) / "model.safetensors";
    if (fs::exists(index, ec)) return open_index(index.string());
    if (fs::exists(single, ec)) return from_file(SafeTensors::open(single.string()));
    throw InputError(path +
                     ": folder holds neither model.safetensors.index.json nor model.safetensors");
  }
  if (ends_with(path, ".json")) return open_index(path);
  return from_file(SafeTensors::open(path));
}

const SafeTensors& Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw InputError(origin_ + ": no tensor " + quote_name(name));
  return files_[it->second];
}

bool Checkpoint::contains(const std::string& name) const {
  return where_.count(name) != 0;
}
const TensorInfo& Checkpoint::info(const std::string& name) const {
  return file_of(name).info(name);
}
std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> v;
  for (const auto& kv : where_) v.push_back(kv.first);
  return v;
}
std::vector<float> Checkpoint::load(const std::string& name) const {
  return file_of(name).load(name);
}
Mat Checkpoint::load_matrix(const std::string& name, std::size_t rows, std::size_t cols) const {
  return file_of(name).load_matrix(name, rows, cols);
}
Vec Checkpoint::load_vector(const std::string& name, std::size_t n) const {
  return file_of(name).load_vector(name, n);
}
Tensor3 Checkpoint::load_tensor3(const std::string& name) const {
  return file_of(name).load_tensor3(name);
}

// =============================================================================================
// Writing
// =============================================================================================

std::vector<std::uint8_t> raw_safetensors_bytes(const std::string& header,
                                                const std::vector<std::uint8_t>& data) {
  // Sized once and filled with memcpy (vector::insert here trips a GCC 12 -Warray-bounds false
  // positive).
  std::vector<std::uint8_t> out(8 + header.size() + data.size());
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = std::uint8_t(n >> (8 * i));
  if (!header.empty()) std::memcpy(out.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(out.data() + 8 + header.size(), data.data(), data.size());
  return out;
}

std::vector<std::uint8_t> safetensors_bytes(const std::vector<TensorData>& tensors,
                                            const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<std::uint8_t> data;
  std::set<std::string> seen;
  for (const TensorData& t : tensors) {
    const std::string where = "write_safetensors: tensor " + quote_name(t.name);
    if (t.name == "__metadata__" || !seen.insert(t.name).second)
      throw InputError(where + ": name used twice or reserved");
    std::size_t n = 1;
    for (std::size_t d : t.shape) n *= d;
    if (n != t.values.size())
      throw InputError(where + ": shape " + shape_str(t.shape) + " needs " + std::to_string(n) +
                       " values, got " + std::to_string(t.values.size()));
    if (t.dtype == DType::Other) throw InputError(where + ": can only write F32, F16 or BF16");
    const std::size_t begin = data.size();
    for (float x : t.values) {
      if (t.dtype == DType::F32) {
        const std::uint32_t u = float_bits(x);
        for (int i = 0; i < 4; ++i) data.push_back(std::uint8_t(u >> (8 * i)));
      } else {
        const std::uint16_t h = t.dtype == DType::BF16 ? float_to_bf16(x) : float_to_f16(x);
        data.push_back(std::uint8_t(h & 0xFF));
        data.push_back(std::uint8_t(h >> 8));
      }
    }
    header[t.name] = {
        {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');
  return raw_safetensors_bytes(text, data);
}

void write_bytes(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw InputError(path + ": cannot create file");
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  if (!f) throw InputError(path + ": cannot write file");
}

void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_bytes(path, safetensors_bytes(tensors, metadata));
}

}  // namespace mla
