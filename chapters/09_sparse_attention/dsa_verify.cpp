#include "09_sparse_attention/dsa_verify.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <fmt/format.h>

#include "09_sparse_attention/sparse_decode.hpp"
#include "mla/bench.hpp"
#include "mla/json.hpp"
#include "mla/rows.hpp"  // shape_str

namespace mla::ch09 {

namespace fs = std::filesystem;

namespace {

Tensor3 load3(const Checkpoint& ckpt, const std::string& name,
              const std::vector<std::size_t>& shape) {
  if (!ckpt.contains(name)) {
    throw InputError(
        fmt::format("{}: no tensor '{}' (a DSA test case needs every tensor of "
                    "data/golden/dsa/README.md)",
                    ckpt.origin(), name));
  }
  Tensor3 t = ckpt.load_tensor3(name);
  if (!std::equal(t.shape().begin(), t.shape().end(), shape.begin(), shape.end())) {
    throw InputError(fmt::format("{}: '{}' has shape {}, expected {}", ckpt.origin(), name,
                                 shape_str(t), shape_str(shape)));
  }
  return t;
}

/// An I32 tensor (the loader converts only float types): its bytes read from the file.
std::vector<std::int32_t> load_i32(const Checkpoint& ckpt, const std::string& name,
                                   const std::vector<std::size_t>& shape) {
  if (!ckpt.contains(name)) {
    throw InputError(fmt::format("{}: no tensor '{}'", ckpt.origin(), name));
  }
  const TensorInfo& info = ckpt.info(name);
  if (info.dtype_name != "I32" || info.shape != shape) {
    throw InputError(fmt::format("{}: '{}' is {} {}, expected I32 {}", ckpt.origin(), name,
                                 info.dtype_name, shape_str(info.shape), shape_str(shape)));
  }
  const std::string& path = ckpt.file_of(name).origin();
  std::ifstream f(path, std::ios::binary);
  std::uint64_t header = 0;
  if (!f.read(reinterpret_cast<char*>(&header), 8)) {
    throw InputError(fmt::format("{}: cannot read '{}'", path, name));
  }
  std::vector<std::int32_t> v(info.numel());
  f.seekg(static_cast<std::streamoff>(8 + header + info.begin));
  if (!f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * 4))) {
    throw InputError(fmt::format("{}: cannot read '{}'", path, name));
  }
  return v;
}

Comparison score_error(const std::vector<std::vector<float>>& got, const Tensor3& want,
                       std::size_t step, std::size_t S, double& rel) {
  // got[b]: (S, cols) of this call; want: (B, steps·S, cols') -> rows step·S .. step·S+S-1.
  Comparison c;
  for (std::size_t b = 0; b < got.size(); ++b) {
    const std::size_t cols = got[b].size() / S, wcols = want.shape(2);
    for (std::size_t s = 0; s < S; ++s) {
      const float* w = want.data() + (b * want.shape(1) + step * S + s) * wcols;
      const float* g = got[b].data() + s * cols;
      double row_max = 0, err = 0;
      for (std::size_t t = 0; t < wcols; ++t) row_max = std::max(row_max, double(std::fabs(w[t])));
      for (std::size_t t = 0; t < wcols; ++t) {
        const float gv = t < cols ? g[t] : 0.0f;
        if (!std::isfinite(gv)) c.finite = false;
        err = std::max(err, double(std::fabs(gv - w[t])));
      }
      rel = std::max(rel, row_max > 0 ? err / row_max : err);
    }
  }
  return c;
}

}  // namespace

std::size_t same_index_sets(const std::vector<std::int32_t>& got,
                            const std::vector<std::int32_t>& want, std::size_t topk) {
  std::size_t ok = 0;
  for (std::size_t r = 0; r * topk < want.size() && r * topk < got.size(); ++r) {
    std::set<std::int32_t> a, b;
    for (std::size_t j = 0; j < topk; ++j) {
      if (got[r * topk + j] >= 0) a.insert(got[r * topk + j]);
      if (want[r * topk + j] >= 0) b.insert(want[r * topk + j]);
    }
    ok += a == b ? 1 : 0;
  }
  return ok;
}

DsaCase load_dsa_case(const std::string& config_path, const std::string& weights_path,
                      std::optional<std::size_t> layer) {
  DsaCase c;
  c.name = fs::path(weights_path).stem().string();
  c.config = DsaConfig::load(config_path);
  const Checkpoint ckpt = Checkpoint::open(weights_path);
  if (layer) {
    c.layer = *layer;
  } else {
    const std::vector<std::size_t> layers = ch06::attention_layers(ckpt);
    if (layers.size() != 1) {
      throw InputError(fmt::format(
          "{}: holds {} attention layers; a DSA case needs one (or choose one with --layer)",
          ckpt.origin(), layers.size()));
    }
    c.layer = layers.front();
  }
  c.weights = std::make_shared<const DsaWeights>(load_dsa_weights(ckpt, c.config, c.layer));
  c.prefill_input =
      ckpt.contains("test.prefill.input") ? ckpt.load_tensor3("test.prefill.input") : Tensor3();
  if (c.prefill_input.dimension() != 3 || c.prefill_input.shape(0) == 0 ||
      c.prefill_input.shape(2) != c.config.mla.hidden_size) {
    throw InputError(
        fmt::format("{}: 'test.prefill.input' missing or not [batch >= 1, S, hidden_size = {}]",
                    ckpt.origin(), c.config.mla.hidden_size));
  }
  const std::size_t B = c.prefill_input.shape(0), S = c.prefill_input.shape(1);
  const std::size_t D = c.config.mla.hidden_size, K = c.config.index_topk;
  if (!ckpt.contains("test.decode.input")) {
    throw InputError(fmt::format("{}: no tensor 'test.decode.input'", ckpt.origin()));
  }
  const std::size_t N = ckpt.info("test.decode.input").shape.size() == 3
                            ? ckpt.info("test.decode.input").shape[1]
                            : 0;
  c.decode_input = load3(ckpt, "test.decode.input", {B, N, D});
  for (const bool fp8 : {false, true}) {
    DsaExpected& e = fp8 ? c.fp8 : c.exact;
    const std::string sfx = fp8 ? "_fp8" : "";
    e.prefill_output = load3(ckpt, "test.prefill.output" + sfx, {B, S, D});
    e.decode_output = load3(ckpt, "test.decode.output" + sfx, {B, N, D});
    e.prefill_topk = load_i32(ckpt, "test.prefill.topk_indices" + sfx, {B, S, K});
    e.decode_topk = load_i32(ckpt, "test.decode.topk_indices" + sfx, {B, N, K});
    e.prefill_scores = load3(ckpt, "test.prefill.index_scores" + sfx, {B, S, S});
    e.decode_scores = load3(ckpt, "test.decode.index_scores" + sfx, {B, N, S + N});
  }
  c.prefill_dense = load3(ckpt, "test.prefill.output_dense", {B, S, D});
  c.decode_dense = load3(ckpt, "test.decode.output_dense", {B, N, D});
  return c;
}

ch06::GoldenCase dense_case(const DsaCase& c) {
  ch06::GoldenCase g;
  g.name = c.name + " (dense)";
  g.config = c.config.mla;
  g.layer = c.layer;
  g.weights = c.weights->mla;
  g.prefill_input = c.prefill_input;
  g.decode_input = c.decode_input;
  g.prefill_output = c.prefill_dense;
  g.decode_output = c.decode_dense;
  return g;
}

std::vector<DsaPath> dsa_paths() {
  return {{"dsa", "indexer + top-k + sparse MLA gathered through the index list (reference loops)",
           reference_sparse_cores(SparseForm::Gathered), 0.0},
          {"dsa_masked", "indexer + top-k + dense MLA scores with DeepSeek's additive index mask",
           reference_sparse_cores(SparseForm::Masked), 0.0},
          {"dsa_fast",
           "indexer + top-k + the selected rows gathered into a tile for chapter 7's kernel (v5)",
           fast_sparse_cores(), 0.0}};
}

std::vector<DsaVerifyRow> verify_dsa_case(const DsaCase& c, const std::vector<DsaPath>& paths,
                                          double tolerance) {
  std::vector<DsaVerifyRow> rows;
  const std::size_t B = c.prefill_input.shape(0), S = c.prefill_input.shape(1);
  const std::size_t N = c.decode_input.shape(1), K = c.config.index_topk;
  for (const DsaPath& path : paths) {
    for (const bool fp8 : {false, true}) {
      const DsaExpected& e = fp8 ? c.fp8 : c.exact;
      DsaOptions opt;
      opt.indexer.fp8 = fp8;
      opt.cores = path.cores;
      DsaLayer layer(c.config, c.weights, B, opt);
      // Gather what the layer selected and scored at every call, in the golden files' layout.
      std::vector<std::int32_t> pre_idx, dec_idx(B * N * K);
      double pre_rel = 0, dec_rel = 0;
      std::size_t call = 0;
      bool finite_scores = true;
      const auto on_call = [&](const DsaLayer& l) {
        const Selection& sel = l.selection();
        if (call == 0) {
          for (std::size_t b = 0; b < B; ++b) {
            pre_idx.insert(pre_idx.end(), sel.indices[b].begin(), sel.indices[b].end());
          }
          finite_scores &= score_error(l.scores(), e.prefill_scores, 0, S, pre_rel).finite;
        } else {
          for (std::size_t b = 0; b < B; ++b) {
            std::copy_n(sel.indices[b].data(), K, dec_idx.data() + (b * N + call - 1) * K);
          }
          finite_scores &= score_error(l.scores(), e.decode_scores, call - 1, 1, dec_rel).finite;
        }
        ++call;
      };
      const double t0 = now_seconds();
      const auto [pre, dec] = run_prefill_decode(layer, c.prefill_input, c.decode_input, on_call);
      const double secs = now_seconds() - t0;
      const auto row = [&](const char* phase, std::size_t tokens, const Tensor3& got,
                           const Tensor3& want, const std::vector<std::int32_t>& idx,
                           const std::vector<std::int32_t>& want_idx, double rel) {
        DsaVerifyRow r;
        r.case_name = c.name;
        r.path = path.name;
        r.variant = fp8 ? "fp8" : "exact";
        r.phase = phase;
        r.tokens = tokens;
        r.cmp = compare(got, want);
        r.index_rows = want_idx.size() / K;
        r.index_rows_ok = same_index_sets(idx, want_idx, K);
        r.score_err = finite_scores ? rel : INFINITY;
        r.score_tolerance = fp8 ? kFp8ScoreTol : kExactScoreTol;
        r.tolerance = std::max(tolerance, path.min_tolerance);
        r.seconds = secs;
        r.pass = r.cmp.finite && r.cmp.max_abs <= r.tolerance && r.index_rows_ok == r.index_rows &&
                 r.score_err <= r.score_tolerance;
        rows.push_back(r);
      };
      row("prefill", S, pre, e.prefill_output, pre_idx, e.prefill_topk, pre_rel);
      row("decode", N, dec, e.decode_output, dec_idx, e.decode_topk, dec_rel);
    }
  }
  return rows;
}

}  // namespace mla::ch09
