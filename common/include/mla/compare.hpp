/// @file compare.hpp
/// @brief How two results are compared: max absolute and max relative error, with tolerances.
///
/// Tests and programs use the same helpers, so "equal" means the same thing in both.
#pragma once

#include <cstddef>
#include <limits>
#include <string>

namespace mla {

/// @addtogroup core
/// @{

/// The outcome of comparing a result with a reference of the same size.
struct Comparison {
  double max_abs = 0.0;   ///< max |a - ref|
  double max_rel = 0.0;   ///< max |a - ref| / max(|ref|, tiny)
  std::size_t worst = 0;  ///< flat index of the largest absolute error
  std::size_t count = 0;  ///< number of elements compared
  bool finite = true;  ///< false if either side holds a NaN or an infinity where the other does not
  std::string describe() const;  ///< "max abs 1.2e-07, max rel 3.4e-06 (n=...)"
};

/// Compare `n` floats of `a` against the reference `ref`.
Comparison compare(const float* a, const float* ref, std::size_t n);

/// Compare two containers with `.size()` and `.data()` (xtensor, std::vector); sizes must agree.
template <class A, class B>
Comparison compare(const A& a, const B& ref) {
  if (a.size() != ref.size()) {
    Comparison c;
    c.finite = false;
    c.max_abs = c.max_rel = std::numeric_limits<double>::infinity();
    return c;
  }
  return compare(a.data(), ref.data(), a.size());
}

/// llm.c's rule: every element within `atol + rtol·|ref|` of the reference, and nothing non-finite
/// that the reference does not also have.
bool allclose(const float* a, const float* ref, std::size_t n, double atol, double rtol);

/// allclose() of two containers with `.size()` and `.data()`; false if the sizes differ.
template <class A, class B>
bool allclose(const A& a, const B& ref, double atol, double rtol) {
  return a.size() == ref.size() && allclose(a.data(), ref.data(), a.size(), atol, rtol);
}

/// @}

}  // namespace mla
