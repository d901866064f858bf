#include "03_multi_head/toy_heads.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "01_attention/attention.hpp"

namespace mla::ch03 {

namespace {

// Column of a toy feature in ch01::toy_embeddings, found by its name.
std::size_t feature(const std::string& name) {
  const auto& names = ch01::toy_feature_names();
  const auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end()) throw std::logic_error("toy_heads: no toy feature '" + name + "'");
  return static_cast<std::size_t>(it - names.begin());
}

}  // namespace

MhaWeights toy_heads() {
  const std::size_t d = ch01::toy_feature_names().size();  // d_model = head_dim
  MhaWeights w;
  w.n_heads = 2;
  w.n_kv_heads = 2;
  w.head_dim = d;
  // The entry that makes q·k/√d_h = 3 where the key has the sought feature (chapter 1's score).
  const float s = 3.0f * std::sqrt(static_cast<float>(d));
  // W_q: (2·d_h, d_model). Row h·d_h + sought, column own: "a token with feature `own` looks,
  // in head h, for a key with feature `sought`".
  w.W_q = xt::zeros<float>({2 * d, d});
  auto looks_for = [&](std::size_t head, const char* own, const char* sought) {
    w.W_q(head * d + feature(sought), feature(own)) = s;
  };
  // Head 0, the noun head: which thing is this about?
  looks_for(0, "noun", "nationality");     // "flag" -> "American"
  looks_for(0, "nationality", "article");  // "American" -> "The"
  for (const char* later : {"verb", "colour", "comma", "conjunction"}) {
    looks_for(0, later, "noun");  // "is", "red", ",", "white", "and" -> "flag"
  }
  // Head 1, the list head: what came before me in the phrase?
  looks_for(1, "noun", "article");  // "flag" -> "The"
  for (const char* item : {"colour", "comma", "conjunction"}) {
    looks_for(1, item, "colour");  // "red", ",", "white", "and" -> the colours so far
  }
  // Keys and values: each head sees the features themselves. W_k, W_v: (2·d_h, d_model).
  w.W_k = xt::zeros<float>({2 * d, d});
  w.W_v = xt::zeros<float>({2 * d, d});
  // W_o: (d_model, 2·d_h) = [I I], the two heads' gathered features added.
  w.W_o = xt::zeros<float>({d, 2 * d});
  for (std::size_t h = 0; h < 2; ++h) {
    for (std::size_t f = 0; f < d; ++f) {
      w.W_k(h * d + f, f) = 1.0f;
      w.W_v(h * d + f, f) = 1.0f;
      w.W_o(f, h * d + f) = 1.0f;
    }
  }
  return w;
}

const std::vector<std::string>& toy_head_names() {
  static const std::vector<std::string> names = {"noun", "list"};
  return names;
}

}  // namespace mla::ch03
