#include "mla/random.hpp"

#include <cmath>

namespace mla {

Mat Rng::normal(std::size_t rows, std::size_t cols, float std) {
  Mat m = xt::empty<float>({rows, cols});
  for (auto& v : m) {
    v = normal(std);
  }
  return m;
}

Vec Rng::normal_vec(std::size_t n, float std) {
  Vec v = xt::empty<float>({n});
  for (auto& x : v) {
    x = normal(std);
  }
  return v;
}

Mat Rng::linear_weight(std::size_t out, std::size_t in) {
  return normal(out, in, 1.0f / std::sqrt(static_cast<float>(in)));
}

}  // namespace mla
