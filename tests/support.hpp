// What several test files share: double-precision references (matrices of doubles, x·Wᵀ, a
// masked softmax, multi-head causal attention), the abs + rel comparison against them, and small
// data helpers (row ranges, random tokens, vectors and batches).
//
// The references are written plainly, in double, independently of the code under test: they are
// what "the right answer" means in the chapter tests and in test_reliability.cpp.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <limits>
#include <string>
#include <system_error>
#include <vector>

#include <unistd.h>

#include <xtensor/xview.hpp>

#include "mla/random.hpp"
#include "mla/tensor.hpp"

namespace mla::test {

// ---------------------------------------------------------------------------------------------
// Double-precision references
// ---------------------------------------------------------------------------------------------

/// A row-major (rows, cols) matrix of doubles: what the references compute in.
struct DMat {
  std::size_t rows = 0, cols = 0;
  std::vector<double> v;
  DMat(std::size_t r, std::size_t c) : rows(r), cols(c), v(r * c, 0.0) {}
  double& operator()(std::size_t i, std::size_t j) { return v[i * cols + j]; }
  double operator()(std::size_t i, std::size_t j) const { return v[i * cols + j]; }
};

/// m (rows, cols) as doubles.
inline DMat to_double(const Mat& m) {
  DMat d(m.shape(0), m.shape(1));
  std::copy(m.begin(), m.end(), d.v.begin());
  return d;
}

/// d (rows, cols) rounded to float, once per element.
inline Mat to_float(const DMat& d) {
  Mat m = xt::empty<float>({d.rows, d.cols});
  for (std::size_t i = 0; i < d.v.size(); ++i) m.data()[i] = static_cast<float>(d.v[i]);
  return m;
}

/// x (n, in) · Wᵀ with W (out, in) -> (n, out), the Linear layout every chapter uses.
inline DMat mul_t(const DMat& x, const DMat& W) {
  DMat y(x.rows, W.rows);
  for (std::size_t i = 0; i < x.rows; ++i) {
    for (std::size_t o = 0; o < W.rows; ++o) {
      double s = 0;
      for (std::size_t k = 0; k < x.cols; ++k) s += x(i, k) * W(o, k);
      y(i, o) = s;
    }
  }
  return y;
}

/// Softmax of the first `visible` entries of p in place (max subtracted first, so scores of any
/// size are exact); the entries after them are masked and become 0.
inline void softmax_ref(std::vector<double>& p, std::size_t visible) {
  double m = -std::numeric_limits<double>::infinity(), sum = 0;
  for (std::size_t t = 0; t < visible; ++t) m = std::max(m, p[t]);
  for (std::size_t t = 0; t < p.size(); ++t) {
    p[t] = t < visible ? std::exp(p[t] - m) : 0.0;
    sum += p[t];
  }
  for (auto& v : p) v /= sum;
}

/// What ref_attention returns.
struct RefAttention {
  DMat out;                    ///< (n, H·d_v): per head softmax(scale·q·kᵀ + mask)·v
  double max_abs_score = 0.0;  ///< the largest |scale·q·k| over every visible (query, key) pair
};

/// Multi-head attention in double: n queries against m keys, H query heads reading H_kv
/// key/value heads (head h reads h / (H / H_kv)). q: (n, H·dk), k: (m, H_kv·dk), v: (m, H_kv·dv).
/// Causal: the queries are the last n of the m positions, query i sees keys 0 .. m − n + i (so
/// n = m is self-attention). Softmax with the max subtracted, so 1e4-sized scores are exact too.
inline RefAttention ref_attention(const DMat& q, const DMat& k, const DMat& v, std::size_t H,
                                  std::size_t H_kv, std::size_t dk, std::size_t dv, double scale,
                                  bool causal = true) {
  const std::size_t n = q.rows, m = k.rows, group = H / H_kv;
  RefAttention r{DMat(n, H * dv)};
  std::vector<double> s(m);
  for (std::size_t h = 0; h < H; ++h) {
    const std::size_t g = h / group;
    for (std::size_t t = 0; t < n; ++t) {
      const std::size_t visible = causal ? m - n + t + 1 : m;
      double mx = -std::numeric_limits<double>::infinity();
      for (std::size_t j = 0; j < visible; ++j) {
        double d = 0;
        for (std::size_t i = 0; i < dk; ++i) d += q(t, h * dk + i) * k(j, g * dk + i);
        s[j] = scale * d;
        mx = std::max(mx, s[j]);
        r.max_abs_score = std::max(r.max_abs_score, std::fabs(s[j]));
      }
      double sum = 0;
      for (std::size_t j = 0; j < visible; ++j) sum += (s[j] = std::exp(s[j] - mx));
      for (std::size_t j = 0; j < visible; ++j) {
        for (std::size_t i = 0; i < dv; ++i) r.out(t, h * dv + i) += s[j] / sum * v(j, g * dv + i);
      }
    }
  }
  return r;
}

/// Single-head attention with scale 1/sqrt(d_k), computed in double and rounded once:
/// q (n, d_k), k (m, d_k), v (m, d_v) -> (n, d_v), queries the last n positions when causal.
inline Mat reference_attention(const Mat& q, const Mat& k, const Mat& v, bool causal = true) {
  const std::size_t d = q.shape(1);
  return to_float(ref_attention(to_double(q), to_double(k), to_double(v), 1, 1, d, v.shape(1),
                                1.0 / std::sqrt(double(d)), causal)
                      .out);
}

/// max |x| over the elements (0 for an empty matrix).
inline double max_abs(const DMat& m) {
  double r = 0;
  for (double x : m.v) r = std::max(r, std::fabs(x));
  return r;
}

/// max |x| over the elements (0 for an empty matrix).
inline double max_abs(const Mat& a) {
  double m = 0;
  for (float v : a) m = std::max(m, double(std::fabs(v)));
  return m;
}

// ---------------------------------------------------------------------------------------------
// Comparison against a double reference
// ---------------------------------------------------------------------------------------------

/// Every element of a (ref.v.size() floats) finite and within atol + rtol·|ref| of the double
/// reference; on failure the message names `what`, the worst element and the tolerances.
inline void check_close(const float* a, const DMat& ref, double atol, double rtol,
                        const std::string& what) {
  std::size_t bad = 0, nonfinite = 0, worst = 0;
  double worst_err = -1;
  for (std::size_t i = 0; i < ref.v.size(); ++i) {
    if (!std::isfinite(a[i])) {
      ++nonfinite;
      continue;
    }
    const double err = std::fabs(double(a[i]) - ref.v[i]);
    if (err > atol + rtol * std::fabs(ref.v[i])) ++bad;
    if (err > worst_err) {
      worst_err = err;
      worst = i;
    }
  }
  INFO(what << ": " << ref.v.size() << " values, worst |error| " << worst_err << " at " << worst
            << " (got " << a[worst] << ", reference " << ref.v[worst] << "), atol " << atol
            << ", rtol " << rtol);
  CHECK(nonfinite == 0);
  CHECK(bad == 0);
}

/// check_close of a matrix of the reference's shape.
inline void check_close(const Mat& a, const DMat& ref, double atol, double rtol,
                        const std::string& what) {
  REQUIRE(a.shape(0) == ref.rows);
  REQUIRE(a.shape(1) == ref.cols);
  check_close(a.data(), ref, atol, rtol, what);
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// Rows [r0, r1) of m, copied: (r1 − r0, cols).
inline Mat rows(const Mat& m, std::size_t r0, std::size_t r1) {
  return xt::view(m, xt::range(r0, r1), xt::all());
}

/// n random token ids in [0, vocab).
inline std::vector<int> random_tokens(Rng& rng, std::size_t n, std::size_t vocab) {
  std::vector<int> t(n);
  for (auto& x : t) x = static_cast<int>(rng.engine()() % vocab);
  return t;
}

/// n numbers drawn N(0, 1).
inline std::vector<float> random_vector(Rng& rng, std::size_t n) {
  std::vector<float> v(n);
  for (float& x : v) x = rng.normal();
  return v;
}

/// A batch (B, S, D) drawn N(0, std²), element after element.
inline Tensor3 random_tensor3(Rng& rng, std::size_t B, std::size_t S, std::size_t D,
                              float std = 1.0f) {
  Tensor3 x = xt::empty<float>({B, S, D});
  for (float& v : x) v = rng.normal(std);
  return x;
}

/// A fresh empty folder under the system temp dir, removed (with what it holds) when the object
/// goes away: for tests that write files. `dir / "name"` is the path of a file in it.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("mla_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

}  // namespace mla::test
