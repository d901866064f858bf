#include "mla/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include <xtensor-blas/xblas.hpp>

namespace mla {

namespace {
void check_inner(std::size_t got, std::size_t want, const char* what) {
  if (got != want) {
    throw std::invalid_argument(std::string(what) + ": inner dimensions differ (" +
                                std::to_string(got) + " vs " + std::to_string(want) + ")");
  }
}
}  // namespace

void linear_into(const Mat& x, const Mat& W, Mat& y) {
  check_inner(x.shape(1), W.shape(1), "linear");
  if (y.shape(0) != x.shape(0) || y.shape(1) != W.shape(0)) {
    y.resize({x.shape(0), W.shape(0)});
  }
  if (x.shape(0) == 0 || W.shape(0) == 0) {
    return;
  }
  if (x.shape(1) == 0) {
    y.fill(0.0f);
    return;
  }
  // y = x · Wᵀ: BLAS transposes W on the fly, no copy.
  xt::blas::gemm(x, W, y, false, true);
}

Mat linear(const Mat& x, const Mat& W) {
  Mat y = xt::empty<float>({x.shape(0), W.shape(0)});
  linear_into(x, W, y);
  return y;
}

Vec linear(const Vec& x, const Mat& W) {
  check_inner(x.size(), W.shape(1), "linear");
  Vec y = xt::zeros<float>({W.shape(0)});
  for (std::size_t o = 0; o < W.shape(0); ++o) {
    const float* w = &W(o, 0);
    float acc = 0.0f;
    for (std::size_t i = 0; i < x.size(); ++i) {
      acc += w[i] * x(i);
    }
    y(o) = acc;
  }
  return y;
}

Mat matmul(const Mat& a, const Mat& b) {
  check_inner(a.shape(1), b.shape(0), "matmul");
  Mat c = xt::zeros<float>({a.shape(0), b.shape(1)});
  if (a.shape(0) == 0 || b.shape(1) == 0 || a.shape(1) == 0) {
    return c;
  }
  xt::blas::gemm(a, b, c, false, false);
  return c;
}

void softmax(float* x, std::size_t n) {
  if (n == 0) {
    return;
  }
  // Subtracting the max makes every exponent <= 0: no overflow, whatever the logits' magnitude.
  const float m = *std::max_element(x, x + n);
  if (m == kMasked) {
    std::fill(x, x + n, 0.0f);  // fully masked row: nothing to attend to (documented)
    return;
  }
  float sum = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);  // exp(-inf) = 0 for masked entries
    sum += x[i];
  }
  const float inv = 1.0f / sum;  // sum >= 1: the max contributes exp(0)
  for (std::size_t i = 0; i < n; ++i) {
    x[i] *= inv;
  }
}

void softmax_rows(Mat& scores) {
  const std::size_t cols = scores.shape(1);
  for (std::size_t r = 0; r < scores.shape(0); ++r) {
    softmax(scores.data() + r * cols, cols);
  }
}

void apply_causal_mask(Mat& scores, std::size_t offset) {
  for (std::size_t i = 0; i < scores.shape(0); ++i) {
    for (std::size_t j = offset + i + 1; j < scores.shape(1); ++j) {
      scores(i, j) = kMasked;
    }
  }
}

Mat causal_mask(std::size_t T) {
  Mat m = xt::zeros<float>({T, T});
  apply_causal_mask(m);
  return m;
}

Mat rmsnorm(const Mat& x, const Vec& w, float eps) {
  const std::size_t d = x.shape(1);
  if (w.size() != d) {
    throw std::invalid_argument("rmsnorm: weight has " + std::to_string(w.size()) +
                                " entries, rows have " + std::to_string(d));
  }
  Mat y = xt::empty<float>(x.shape());
  for (std::size_t r = 0; r < x.shape(0); ++r) {
    const float* xr = &x(r, 0);
    double ss = 0.0;  // accumulate in double: d can be thousands
    for (std::size_t i = 0; i < d; ++i) {
      ss += static_cast<double>(xr[i]) * xr[i];
    }
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(d)) + eps);
    for (std::size_t i = 0; i < d; ++i) {
      y(r, i) = xr[i] * inv * w(i);
    }
  }
  return y;
}

}  // namespace mla
