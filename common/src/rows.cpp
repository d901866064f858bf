#include "mla/rows.hpp"

#include <algorithm>

namespace mla {

xt::xtensor<float, 2> to_mat(RowView<const float> v) {
  xt::xtensor<float, 2> out = xt::empty<float>({v.rows(), v.cols()});
  for (std::size_t r = 0; r < v.rows(); ++r)
    std::copy_n(v.row(r), v.cols(), out.data() + r * v.cols());
  return out;
}

xt::xtensor<float, 2> columns(const xt::xtensor<float, 2>& m, std::size_t c0, std::size_t n) {
  return to_mat(RowView(m).cols_range(c0, n));
}

std::string shape_str(const std::vector<std::size_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace mla
