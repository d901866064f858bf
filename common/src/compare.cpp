#include "mla/compare.hpp"

#include <cmath>
#include <cstdio>

namespace mla {

namespace {
// Both NaN, or both the same infinity, counts as agreement; anything else non-finite does not.
bool same_nonfinite(float a, float r) {
  if (std::isnan(a) && std::isnan(r)) return true;
  return std::isinf(a) && std::isinf(r) && (a > 0) == (r > 0);
}
}  // namespace

Comparison compare(const float* a, const float* ref, std::size_t n) {
  Comparison c;
  c.count = n;
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(ref[i])) {
      if (!same_nonfinite(a[i], ref[i])) c.finite = false;
      continue;
    }
    const double d = std::fabs(static_cast<double>(a[i]) - ref[i]);
    const double r = d / std::fmax(std::fabs(static_cast<double>(ref[i])), 1e-30);
    if (d > c.max_abs) {
      c.max_abs = d;
      c.worst = i;
    }
    if (r > c.max_rel) c.max_rel = r;
  }
  return c;
}

std::string Comparison::describe() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "max abs %.3e, max rel %.3e (n=%zu)%s", max_abs, max_rel, count,
                finite ? "" : ", NON-FINITE MISMATCH");
  return buf;
}

bool allclose(const float* a, const float* ref, std::size_t n, double atol, double rtol) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(ref[i])) {
      if (!same_nonfinite(a[i], ref[i])) return false;
      continue;
    }
    const double d = std::fabs(static_cast<double>(a[i]) - ref[i]);
    if (d > atol + rtol * std::fabs(static_cast<double>(ref[i]))) return false;
  }
  return true;
}

}  // namespace mla
