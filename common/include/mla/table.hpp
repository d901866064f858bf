/// @file table.hpp
/// @brief A plain text table for the programs' results, and CSV next to it.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace mla {

/// @addtogroup core
/// @{

/// Rows of strings under a header, printed with aligned columns (numbers right-aligned).
/// `write_csv` saves the same rows, so the plots and the terminal show the same data.
class Table {
 public:
  /// An empty table with these column titles.
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  /// Append one row; it must have as many cells as the header.
  void add(std::vector<std::string> row);
  /// The header, a line of dashes, then the rows; every column as wide as its widest cell.
  void print(std::ostream& os) const;
  /// Write header and rows as CSV to `path` (creating its folder); throws on failure.
  void write_csv(const std::string& path) const;
  /// Rows added (the header not counted).
  std::size_t rows() const { return rows_.size(); }

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

/// A square matrix of attention weights, P (n, n) row-major (row = query, column = key), as CSV:
/// `labels` (n) as the row and column headers (the corner cell "query"), each weight with 6
/// significant digits. What the heatmaps of docs/plots read with `matrix rowheaders
/// columnheaders`. A label must not hold a comma (CSV; gnuplot ignores quoting).
void write_matrix_csv(const std::string& path, const std::vector<std::string>& labels,
                      const float* P);

/// A number with `digits` significant digits ("%.*g"): 0.0123456 -> "0.01235".
std::string num(double v, int digits = 4);
/// A number with `decimals` digits after the point ("%.*f"): 3.14159 -> "3.14".
std::string fixed(double v, int decimals = 2);
/// An integer with thousands separators: 3997696 -> "3,997,696".
std::string grouped(long long v);
/// Bytes in human units: 70272 -> "68.6 KiB".
std::string human_bytes(double bytes);

/// @}

}  // namespace mla
