#include "mla/table.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <stdexcept>

namespace mla {

void Table::add(std::vector<std::string> row) {
  if (row.size() != header_.size()) {
    throw std::invalid_argument("Table::add: row has " + std::to_string(row.size()) +
                                " cells, header has " + std::to_string(header_.size()));
  }
  rows_.push_back(std::move(row));
}

namespace {
bool numeric(const std::string& s) {
  return !s.empty() && (std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-' ||
                        s[0] == '+' || s[0] == '.');
}
}  // namespace

void Table::print(std::ostream& os) const {
  std::vector<std::size_t> w(header_.size());
  for (std::size_t c = 0; c < header_.size(); ++c) {
    w[c] = header_[c].size();
    for (const auto& r : rows_) w[c] = std::max(w[c], r[c].size());
  }
  auto line = [&](const std::vector<std::string>& cells, bool head) {
    for (std::size_t c = 0; c < cells.size(); ++c) {
      const std::string pad(w[c] - cells[c].size(), ' ');
      os << (c ? "  " : "") << (!head && numeric(cells[c]) ? pad + cells[c] : cells[c] + pad);
    }
    os << '\n';
  };
  line(header_, true);
  std::size_t total = 0;
  for (auto x : w) total += x;
  os << std::string(total + 2 * (w.size() - 1), '-') << '\n';
  for (const auto& r : rows_) line(r, false);
}

void Table::write_csv(const std::string& path) const {
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write " + path);
  auto row = [&](const std::vector<std::string>& cells) {
    for (std::size_t c = 0; c < cells.size(); ++c) {
      std::string s = cells[c];
      s.erase(std::remove(s.begin(), s.end(), ','), s.end());  // "3,997,696" -> 3997696
      f << (c ? "," : "") << s;
    }
    f << '\n';
  };
  row(header_);
  for (const auto& r : rows_) row(r);
}

void write_matrix_csv(const std::string& path, const std::vector<std::string>& labels,
                      const float* P) {
  const std::size_t n = labels.size();
  std::vector<std::string> header = {"query"};
  header.insert(header.end(), labels.begin(), labels.end());
  Table csv(header);
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<std::string> row = {labels[i]};
    for (std::size_t j = 0; j < n; ++j) row.push_back(num(P[i * n + j], 6));
    csv.add(row);
  }
  csv.write_csv(path);
}

std::string num(double v, int digits) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*g", digits, v);
  return b;
}

std::string fixed(double v, int decimals) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", decimals, v);
  return b;
}

std::string grouped(long long v) {
  std::string s = std::to_string(v < 0 ? -v : v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3)
    s.insert(static_cast<std::size_t>(i), ",");
  return v < 0 ? "-" + s : s;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::fabs(bytes) >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  char b[64];
  std::snprintf(b, sizeof b, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return b;
}

}  // namespace mla
