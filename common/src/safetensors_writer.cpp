// Writing safetensors files, as the reference writer lays them out.
#include "mla/safetensors_writer.hpp"

#include <cstring>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "messages.hpp"
#include "mla/errors.hpp"
#include "mla/rows.hpp"  // shape_str

namespace mla {

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
    const std::string where =
        fmt::format("write_safetensors: tensor {}", detail::quote_name(t.name));
    if (t.name == "__metadata__" || !seen.insert(t.name).second)
      throw InputError(fmt::format("{}: name used twice or reserved", where));
    std::size_t n = 1;
    for (std::size_t d : t.shape) n *= d;
    if (n != t.values.size())
      throw InputError(fmt::format("{}: shape {} needs {} values, got {}", where,
                                   shape_str(t.shape), n, t.values.size()));
    if (t.dtype == DType::Other)
      throw InputError(fmt::format("{}: can only write F32, F16 or BF16", where));
    const std::size_t begin = data.size();
    encode_from_float(t.dtype, t.values.data(), t.values.size(), data);
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
  if (!f) throw InputError(fmt::format("{}: cannot create file", path));
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  if (!f) throw InputError(fmt::format("{}: cannot write file", path));
}

void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_bytes(path, safetensors_bytes(tensors, metadata));
}

}  // namespace mla
