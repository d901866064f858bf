/// @file rows.hpp
/// @brief The small vocabulary the chapters share for strided data: a row view, shape text, and
/// a copy of a block of columns.
///
/// Kernels and attention loops keep meeting the same thing: "rows of `cols` numbers, `stride`
/// apart in memory" (one head's keys inside a (T, heads·d_h) matrix, the latent part of a
/// `[c_kv | k_rope]` cache row, a tile of a cache). Instead of passing `(ptr, ld, rows, col0,
/// cols)` as five loose arguments, they pass a RowView (gemma.cpp's `MatPtrT` with `Row()` and
/// `Stride()` is the same idea).
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

#include <xtensor/xtensor.hpp>

namespace mla {

/// @addtogroup core
/// @{

/// `rows` rows of `cols` elements, row `i` starting at `data + i·stride` (stride ≥ cols).
/// A view: it owns nothing and copies nothing. `RowView<const float>` reads,
/// `RowView<float>` writes; a writable view converts to a read-only one.
template <class T>
class RowView {
 public:
  RowView() = default;
  /// data: the first element of row 0; the view covers rows × cols of a buffer with row stride
  /// `stride` (in elements).
  RowView(T* data, std::size_t rows, std::size_t cols, std::size_t stride)
      : data_(data), rows_(rows), cols_(cols), stride_(stride) {}
  /// A contiguous (rows, cols) block: stride = cols.
  RowView(T* data, std::size_t rows, std::size_t cols) : RowView(data, rows, cols, cols) {}
  /// Every row of a row-major matrix (xt::xtensor<float, 2>, or its const).
  template <class M, class = decltype(std::declval<M&>().shape(1))>
  explicit RowView(M& m) : RowView(m.data(), m.shape(0), m.shape(1), m.shape(1)) {}

  /// A writable view reads as a read-only one.
  operator RowView<const T>() const { return {data_, rows_, cols_, stride_}; }

  /// Pointer to the first element of row i.
  T* row(std::size_t i) const { return data_ + i * stride_; }
  /// Element (i, j).
  T& operator()(std::size_t i, std::size_t j) const { return data_[i * stride_ + j]; }
  /// The first element of row 0.
  T* data() const { return data_; }
  std::size_t rows() const { return rows_; }      ///< number of rows
  std::size_t cols() const { return cols_; }      ///< elements per row that the view covers
  std::size_t stride() const { return stride_; }  ///< elements from one row to the next

  /// Columns [c0, c0 + n) of every row: one head's slice, the latent part of a cache row.
  RowView cols_range(std::size_t c0, std::size_t n) const {
    return {data_ + c0, rows_, n, stride_};
  }
  /// Rows [r0, r0 + n): a tile.
  RowView rows_range(std::size_t r0, std::size_t n) const {
    return {data_ + r0 * stride_, n, cols_, stride_};
  }

 private:
  T* data_ = nullptr;
  std::size_t rows_ = 0, cols_ = 0, stride_ = 0;
};

/// Deduction from a matrix: `RowView rows(m)` is writable for a mutable m, read-only for a const.
template <class M>
RowView(M& m) -> RowView<std::remove_reference_t<decltype(*std::declval<M&>().data())>>;

/// The rows of a view copied into a fresh (rows, cols) matrix (a head's slice of q, k or v).
xt::xtensor<float, 2> to_mat(RowView<const float> v);

/// Columns [c0, c0 + n) of every row of m, copied into a new (rows, n) matrix.
xt::xtensor<float, 2> columns(const xt::xtensor<float, 2>& m, std::size_t c0, std::size_t n);

/// "[192, 256]": a shape as error messages and tables print it.
std::string shape_str(const std::vector<std::size_t>& shape);

/// The shape of any xtensor (or anything with a `.shape()` of sizes), as shape_str prints it.
template <class E, class = decltype(std::declval<const E&>().shape())>
std::string shape_str(const E& e) {
  const auto& s = e.shape();
  return shape_str(std::vector<std::size_t>(s.begin(), s.end()));
}

/// @}

}  // namespace mla
