#include "04_low_rank_latents/spectrum.hpp"

#include <stdexcept>
#include <string>

#include <xtensor/xview.hpp>

#include "04_low_rank_latents/latent.hpp"
#include "mla/errors.hpp"

namespace mla::ch04 {

namespace {

std::string kv_name(std::size_t layer, const char* which) {
  return "model.layers." + std::to_string(layer) + ".self_attn." + which + "_proj.weight";
}

}  // namespace

std::vector<double> energy_captured(const Vec& s) {
  std::vector<double> e(s.size());
  double total = 0.0;
  for (float v : s) total += static_cast<double>(v) * v;
  double sum = 0.0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    sum += static_cast<double>(s(i)) * s(i);
    e[i] = total > 0.0 ? sum / total : 1.0;
  }
  return e;
}

std::size_t rank_for_energy(const Vec& s, double fraction) {
  if (!(fraction > 0.0 && fraction <= 1.0)) {
    throw std::invalid_argument("rank_for_energy: fraction must be in (0, 1]");
  }
  const std::vector<double> e = energy_captured(s);
  for (std::size_t r = 1; r <= e.size(); ++r) {
    // The last entry is 1 up to rounding: a fraction of 1 must still find it.
    if (e[r - 1] >= fraction || r == e.size()) return r;
  }
  return 0;  // s is empty
}

std::size_t count_kv_layers(const SafeTensors& f) {
  std::size_t n = 0;
  while (f.contains(kv_name(n, "k"))) ++n;
  return n;
}

KvProjections load_kv_projections(const SafeTensors& f, std::size_t layer, std::size_t head_dim) {
  const std::string k = kv_name(layer, "k"), v = kv_name(layer, "v");
  const std::vector<std::size_t> shape = f.info(k).shape;  // InputError if missing
  if (shape.size() != 2 || head_dim == 0 || shape[0] % head_dim != 0) {
    throw InputError(f.origin() + ": tensor '" + k + "' has shape " + shape_str(shape) +
                     ", expected [heads·" + std::to_string(head_dim) + ", d_model]");
  }
  KvProjections p;
  p.head_dim = head_dim;
  f.load_into(k, shape, p.W_k);
  f.load_into(v, shape, p.W_v);  // the same shape as k_proj, or InputError naming v_proj
  return p;
}

Mat stack_kv(const KvProjections& p) {
  const std::size_t rows = p.W_k.shape(0), D = p.W_k.shape(1);
  Mat W = xt::empty<float>({2 * rows, D});
  xt::view(W, xt::range(0, rows), xt::all()) = p.W_k;
  xt::view(W, xt::range(rows, 2 * rows), xt::all()) = p.W_v;
  return W;
}

KvSpectrum kv_spectrum(const KvProjections& p) {
  KvSpectrum out;
  out.joint = svd(stack_kv(p)).s;
  out.all_k = svd(p.W_k).s;
  out.all_v = svd(p.W_v).s;
  const std::size_t d = p.head_dim, heads = p.W_k.shape(0) / d;
  for (std::size_t h = 0; h < heads; ++h) {
    const Mat k = xt::view(p.W_k, xt::range(h * d, (h + 1) * d), xt::all());
    const Mat v = xt::view(p.W_v, xt::range(h * d, (h + 1) * d), xt::all());
    out.head_k.push_back(svd(k).s);
    out.head_v.push_back(svd(v).s);
  }
  return out;
}

}  // namespace mla::ch04
