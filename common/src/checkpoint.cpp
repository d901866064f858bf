// Sharded checkpoints: the index file validated, its shards opened, one lookup over all of them.
#include "mla/checkpoint.hpp"

#include <cmath>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "messages.hpp"
#include "mla/json.hpp"

namespace mla {

namespace fs = std::filesystem;
using detail::brief;
using detail::quote_name;

std::vector<std::string> SafetensorsIndex::shards() const {
  std::set<std::string> s;
  for (const auto& kv : weight_map) s.insert(kv.second);
  return {s.begin(), s.end()};
}

SafetensorsIndex parse_safetensors_index(const std::string& text, const std::string& origin) {
  const nlohmann::json j = parse_json(text, origin, {"index", /*unique_keys=*/true});
  if (!j.is_object())
    throw InputError(fmt::format("{}: index is {}, not a JSON object", origin, brief(j)));
  SafetensorsIndex idx;
  if (auto m = j.find("metadata"); m != j.end() && !m->is_null()) {
    if (!m->is_object())
      throw InputError(fmt::format("{}: 'metadata' is {}, not an object", origin, brief(*m)));
    idx.metadata = *m;
  }
  auto wm = j.find("weight_map");
  if (wm == j.end()) throw InputError(fmt::format("{}: 'weight_map' is missing", origin));
  if (!wm->is_object())
    throw InputError(fmt::format("{}: 'weight_map' is {}, not an object", origin, brief(*wm)));
  if (wm->empty()) throw InputError(fmt::format("{}: 'weight_map' is empty", origin));
  for (const auto& [name, v] : wm->items()) {
    const std::string where = fmt::format("{}: weight_map entry {}", origin, quote_name(name));
    if (!v.is_string())
      throw InputError(fmt::format("{} is {}, not a shard file name", where, brief(v)));
    const std::string shard = v.get<std::string>();
    // Shard names are relative to the index's folder; refuse anything that could point outside.
    if (shard.empty()) throw InputError(fmt::format("{} names an empty shard file", where));
    const fs::path p(shard);
    if (p.is_absolute() || shard.find('\0') != std::string::npos)
      throw InputError(
          fmt::format("{}: shard {} must be a relative file name", where, quote_name(shard)));
    for (const auto& part : p)
      if (part == "..")
        throw InputError(
            fmt::format("{}: shard {} must not contain '..'", where, quote_name(shard)));
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
        throw InputError(fmt::format("{}: shard {} (holding tensor {}) was not opened", origin,
                                     quote_name(shard), quote_name(name)));
      s = slot.emplace(shard, c.files_.size()).first;
      c.files_.push_back(std::move(f->second));
    }
    if (!c.files_[s->second].contains(name))
      throw InputError(
          fmt::format("{}: tensor {} is mapped to shard {}, but that file has no such tensor",
                      origin, quote_name(name), quote_name(shard)));
    c.where_.emplace(name, s->second);
  }
  return c;
}

namespace {

Checkpoint open_index(const std::string& path) {
  const SafetensorsIndex idx = parse_safetensors_index(read_text_file(path), path);
  const fs::path folder = fs::path(path).parent_path();
  std::map<std::string, SafeTensors> shards;
  for (const std::string& shard : idx.shards()) {
    const fs::path file = folder / shard;
    std::error_code ec;
    if (!fs::is_regular_file(file, ec))
      throw InputError(fmt::format("{}: shard {} does not exist (looked for {})", path,
                                   quote_name(shard), file.string()));
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
    throw InputError(fmt::format(
        "{}: folder holds neither model.safetensors.index.json nor model.safetensors", path));
  }
  if (ends_with(path, ".json")) return open_index(path);
  return from_file(SafeTensors::open(path));
}

const SafeTensors& Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    throw InputError(fmt::format("{}: no tensor {}", origin_, quote_name(name)));
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

// ---------------------------------------------------------------------------------------------
// Weights as models compute with them: block-quantized FP8 dequantized with its scales
// ---------------------------------------------------------------------------------------------

namespace {

std::string scale_name_of(const std::string& name) {
  return name + "_scale_inv";
}

std::size_t ceil_div(std::size_t a, std::size_t b) {
  return (a + b - 1) / b;
}

}  // namespace

void Checkpoint::check_weight(const std::string& name, const std::vector<std::size_t>& shape,
                              const std::optional<Fp8Quantization>& quant) const {
  const TensorInfo& t = file_of(name).expect(name, shape);
  const std::string scale = scale_name_of(name);
  if (!is_fp8(t.dtype)) {
    if (contains(scale))
      throw InputError(fmt::format(
          "{}: tensor {} has dtype {}, not FP8, but the checkpoint has a scale {} for it (only "
          "a block-quantized F8_E4M3 weight has one)",
          origin_, quote_name(name), t.dtype_name, quote_name(scale)));
    return;
  }
  if (!quant)
    throw InputError(fmt::format(
        "{}: tensor {} is {} (block-quantized), but the config has no quantization_config (its "
        "weight_block_size says how the scales tile the weight)",
        origin_, quote_name(name), t.dtype_name));
  if (shape.size() != 2)
    throw InputError(
        fmt::format("{}: tensor {} is {} with shape {}: only a 2-d Linear weight can "
                    "be block-quantized",
                    origin_, quote_name(name), t.dtype_name, shape_str(shape)));
  if (!contains(scale))
    throw InputError(fmt::format("{}: FP8 weight {} has no scale {} (one per {}x{} block)", origin_,
                                 quote_name(name), quote_name(scale), quant->block_rows,
                                 quant->block_cols));
  const TensorInfo& s = info(scale);
  if (s.dtype != DType::F32)
    throw InputError(fmt::format("{}: scale {} has dtype {}, expected F32", origin_,
                                 quote_name(scale), s.dtype_name));
  const std::vector<std::size_t> want = {ceil_div(shape[0], quant->block_rows),
                                         ceil_div(shape[1], quant->block_cols)};
  if (s.shape != want)
    throw InputError(
        fmt::format("{}: scale {} has shape {}, expected {} (one per {}x{} block of {}'s {})",
                    origin_, quote_name(scale), shape_str(s.shape), shape_str(want),
                    quant->block_rows, quant->block_cols, quote_name(name), shape_str(shape)));
}

void Checkpoint::load_weight_into(const std::string& name, const std::vector<std::size_t>& shape,
                                  float* out, const std::optional<Fp8Quantization>& quant) const {
  check_weight(name, shape, quant);
  file_of(name).load_into(name, out);  // FP8: the codes' values, before their scales
  if (!is_fp8(info(name).dtype)) return;
  const std::string scale = scale_name_of(name);
  const std::vector<float> s = load(scale);
  const std::size_t rows = shape[0], cols = shape[1];
  const std::size_t br = quant->block_rows, bc = quant->block_cols, nbc = ceil_div(cols, bc);
  for (std::size_t k = 0; k < s.size(); ++k) {
    if (!(std::isfinite(s[k]) && s[k] > 0))
      throw InputError(fmt::format(
          "{}: scale {} holds {} for block ({}, {}); scales must be finite and positive", origin_,
          quote_name(scale), s[k], k / nbc, k % nbc));
  }
  // Row i, column j belongs to block (i / br, j / bc): each row applies its block row's scales
  // to runs of bc columns (the last run partial).
  for (std::size_t i = 0; i < rows; ++i) {
    const float* srow = s.data() + (i / br) * nbc;
    float* w = out + i * cols;
    for (std::size_t j = 0; j < cols; ++j) w[j] *= srow[j / bc];
  }
}

}  // namespace mla
