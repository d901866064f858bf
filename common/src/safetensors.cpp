// One safetensors file: mapped (or held) bytes, the validated header (safetensors_header.cpp),
// and the tensors converted to float (dtype.cpp).
#include "mla/safetensors.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "messages.hpp"

namespace mla {

using detail::quote_name;

/// What a SafeTensors holds: the file's bytes (mapped or owned) and its validated header. Behind
/// a pointer, so the public header needs no POSIX headers and a move copies one pointer.
struct SafeTensors::Impl {
  std::string origin;                  ///< path or from_bytes origin: what every error starts with
  std::vector<std::uint8_t> owned;     ///< from_bytes: the file's bytes
  void* map = nullptr;                 ///< open: the read-only mapping of the whole file
  std::size_t map_len = 0;             ///< bytes mapped, for munmap
  const std::uint8_t* data = nullptr;  ///< start of the data section
  SafetensorsHeader header;            ///< the tensors and the metadata, validated

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (map) ::munmap(map, map_len);
  }

  /// Validate the whole file: `bytes` points at `size` bytes that live as long as *this.
  void parse(const std::uint8_t* bytes, std::size_t size) {
    header = parse_safetensors_header(bytes, size, origin);
    data = bytes + header.data_offset;
  }

  /// The entry of `name`; InputError "<origin>: no tensor '<name>'" if there is none.
  const TensorInfo& info(const std::string& name) const {
    auto it = header.tensors.find(name);
    if (it == header.tensors.end())
      throw InputError(fmt::format("{}: no tensor {}", origin, quote_name(name)));
    return it->second;
  }

  /// InputError unless decode_to_float can convert `t`'s dtype.
  void require_loadable(const TensorInfo& t) const {
    if (t.dtype == DType::Other)
      throw InputError(
          fmt::format("{}: tensor {} has dtype {}; only F32, F16, BF16, F8_E4M3 and F8_E5M2 can be "
                      "loaded as float",
                      origin, quote_name(t.name), t.dtype_name));
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
  if (fd < 0)
    throw InputError(fmt::format("{}: cannot open file ({})", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(fmt::format("{}: not a regular file", path));
  }
  const std::size_t size = std::size_t(st.st_size);
  if (size >= 8) {  // mmap of 0 bytes is an error; short files are reported by parse()
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw InputError(fmt::format("{}: cannot map file ({})", path, std::strerror(err)));
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
  return impl_->header.tensors.count(name) != 0;
}

const TensorInfo& SafeTensors::info(const std::string& name) const {
  return impl_->info(name);
}

std::vector<std::string> SafeTensors::names() const {
  std::vector<const TensorInfo*> v;
  for (const auto& kv : impl_->header.tensors) v.push_back(&kv.second);
  std::stable_sort(v.begin(), v.end(),
                   [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  std::vector<std::string> out;
  for (const TensorInfo* t : v) out.push_back(t->name);
  return out;
}

const nlohmann::json& SafeTensors::metadata() const {
  return impl_->header.metadata;
}

const TensorInfo& SafeTensors::expect(const std::string& name,
                                      const std::vector<std::size_t>& shape) const {
  const TensorInfo& t = impl_->info(name);
  if (t.shape != shape)
    throw InputError(fmt::format("{}: tensor {} has shape {}, expected {}", impl_->origin,
                                 quote_name(name), shape_str(t.shape), shape_str(shape)));
  impl_->require_loadable(t);
  return t;
}

void SafeTensors::load_into(const std::string& name, float* out) const {
  const TensorInfo& t = impl_->info(name);
  impl_->require_loadable(t);
  decode_to_float(t.dtype, impl_->data + t.begin, t.numel(), out);
}

std::vector<float> SafeTensors::load(const std::string& name) const {
  const TensorInfo& t = impl_->info(name);
  impl_->require_loadable(t);  // before allocating
  std::vector<float> v(t.numel());
  load_into(name, v.data());
  return v;
}

Mat SafeTensors::load_matrix(const std::string& name, std::size_t rows, std::size_t cols) const {
  Mat m;
  load_into(name, {rows, cols}, m);
  return m;
}

Vec SafeTensors::load_vector(const std::string& name, std::size_t n) const {
  Vec v;
  load_into(name, {n}, v);
  return v;
}

Tensor3 SafeTensors::load_tensor3(const std::string& name) const {
  const TensorInfo& t = impl_->info(name);
  if (t.shape.size() != 3)
    throw InputError(fmt::format("{}: tensor {} has shape {}, expected 3 dimensions", impl_->origin,
                                 quote_name(name), shape_str(t.shape)));
  Tensor3 x;
  load_into(name, t.shape, x);
  return x;
}

}  // namespace mla
