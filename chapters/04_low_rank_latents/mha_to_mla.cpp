// From a trained MHA layer to MLA (mha_to_mla.hpp): the rope selection across heads, then the
// joint truncated SVD of what is left of the keys and the values.
#include "04_low_rank_latents/mha_to_mla.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include <fmt/format.h>

#include "04_low_rank_latents/latent.hpp"
#include "mla/errors.hpp"
#include "mla/rows.hpp"

namespace mla::ch04 {

namespace {

/// B, or the identity (D, D) when B is empty.
Mat basis_or_identity(const Mat& B, std::size_t D) {
  if (B.size() != 0) return B;
  Mat I = xt::zeros<float>({D, D});
  for (std::size_t i = 0; i < D; ++i) I(i, i) = 1.0f;
  return I;
}

void check_projections(const MhaProjections& p, const Mat& B) {
  const std::size_t H = p.heads, d = p.head_dim;
  if (H == 0 || d == 0 || d % 2 != 0) {
    throw InputError(fmt::format(
        "mha_to_mla: heads {} and head_dim {}: need heads >= 1 and an even head_dim (RoPE pairs)",
        H, d));
  }
  const std::size_t D = p.W_q.shape(1);
  for (const auto& [name, W] :
       {std::pair<const char*, const Mat*>{"W_q", &p.W_q}, {"W_k", &p.W_k}, {"W_v", &p.W_v}}) {
    if (W->shape(0) != H * d || W->shape(1) != D) {
      throw InputError(
          fmt::format("mha_to_mla: {} has shape {}, expected ({}, {}) for {} heads "
                      "of {} (MHA: as many key/value heads as query heads)",
                      name, shape_str(*W), H * d, D, H, d));
    }
  }
  if (B.size() != 0 && B.shape(0) != D) {
    throw InputError(
        fmt::format("mha_to_mla: input basis has shape {}, expected ({}, k)", shape_str(B), D));
  }
}

}  // namespace

double MlaFromMha::energy_kept() const {
  double all = 0.0, kept = 0.0;
  for (std::size_t i = 0; i < singular_values.size(); ++i) {
    const double e = static_cast<double>(singular_values(i)) * singular_values(i);
    all += e;
    if (i < rank) kept += e;
  }
  return all > 0.0 ? kept / all : 1.0;
}

Mat input_basis_from_second_moment(const Mat& sigma) {
  if (sigma.shape(0) != sigma.shape(1)) {
    throw InputError("input_basis_from_second_moment: the second moment has shape " +
                     shape_str(sigma) + ", not square");
  }
  const Svd e = svd(sigma);  // symmetric PSD: U = V, s = its eigenvalues
  Mat B = e.U;
  for (std::size_t r = 0; r < B.shape(0); ++r) {
    for (std::size_t c = 0; c < B.shape(1); ++c) B(r, c) *= std::sqrt(std::max(0.0f, e.s(c)));
  }
  return B;
}

std::size_t max_latent_rank(const MhaProjections& p, const Mat& input_basis) {
  const std::size_t k = input_basis.size() != 0 ? input_basis.shape(1) : p.W_q.shape(1);
  return std::min(2 * p.heads * p.head_dim, k);
}

MlaFromMha mha_to_mla(const MhaProjections& p, const MhaToMlaOptions& o, const Mat& input_basis) {
  check_projections(p, input_basis);
  const std::size_t H = p.heads, d = p.head_dim, half = d / 2, D = p.W_q.shape(1);
  const std::size_t max_rank = max_latent_rank(p, input_basis);
  if (o.rank == 0 || o.rank > max_rank) {
    throw InputError(fmt::format(
        "mha_to_mla: rank {} is not in 1..{} (the keys and values [W_K; W_V] are ({}, {}): "
        "their rank is at most {})",
        o.rank, max_rank, 2 * H * d, D, max_rank));
  }
  if (o.rope_pairs > half) {
    throw InputError(
        fmt::format("mha_to_mla: rope pairs {} is above {} (a head of {} has {} "
                    "frequency pairs)",
                    o.rope_pairs, half, d, half));
  }
  if (o.rope_pairs > 0 && (o.rope_components == 0 || o.rope_components > H)) {
    throw InputError(fmt::format("mha_to_mla: rope components {} is not in 1..{} (the heads)",
                                 o.rope_components, H));
  }
  const Mat B = basis_or_identity(input_basis, D);  // (D, k)
  const std::size_t m = o.rope_pairs > 0 ? o.rope_components : 0;
  const std::size_t units = o.rope_pairs * m, dr = 2 * units;

  MlaFromMha out;
  out.heads = H;
  out.head_dim = d;
  out.rank = o.rank;
  out.W_q = p.W_q;
  out.W_qr = xt::zeros<float>({H * dr, D});
  out.W_kr = xt::zeros<float>({dr, D});
  Mat Wkn = p.W_k;  // (H·d, D): the keys' part without RoPE, rope components removed below

  for (std::size_t i = 0; i < o.rope_pairs; ++i) {
    // Pair i of every head: rows (h·d + i) and (h·d + i + d/2) of W_k. The principal directions
    // across heads of these 2-vectors: left singular vectors of M = [K_x·B, K_y·B] (H, 2k), the
    // same mixing for both halves so that it commutes with the pair's rotation.
    Mat Kx = xt::empty<float>({H, D}), Ky = xt::empty<float>({H, D});
    for (std::size_t h = 0; h < H; ++h) {
      for (std::size_t c = 0; c < D; ++c) {
        Kx(h, c) = p.W_k(h * d + i, c);
        Ky(h, c) = p.W_k(h * d + i + half, c);
      }
    }
    const Mat KxB = matmul(Kx, B), KyB = matmul(Ky, B);  // (H, k) each
    Mat M = xt::empty<float>({H, 2 * B.shape(1)});
    for (std::size_t h = 0; h < H; ++h) {
      std::copy_n(&KxB(h, 0), B.shape(1), &M(h, 0));
      std::copy_n(&KyB(h, 0), B.shape(1), &M(h, B.shape(1)));
    }
    const Svd s = svd(M);  // U (H, min(H, 2k))
    if (s.U.shape(1) < m) {
      throw InputError(
          fmt::format("mha_to_mla: rope components {}: pair {} spans only {} "
                      "directions",
                      m, i, s.U.shape(1)));
    }
    for (std::size_t j = 0; j < m; ++j) {
      const std::size_t u = i * m + j;  // unit u: rows u and u + units of the rope vectors
      out.rope_pair.push_back(i);
      for (std::size_t h = 0; h < H; ++h) {
        const float w = s.U(h, j);  // head h's share of direction j
        for (std::size_t c = 0; c < D; ++c) {
          out.W_kr(u, c) += w * Kx(h, c);  // k'_j = Σ_h U[h][j]·k_h
          out.W_kr(u + units, c) += w * Ky(h, c);
          out.W_qr(h * dr + u, c) =
              w * p.W_q(h * d + i, c);  // head h queries k'_j with U[h][j]·q_h
          out.W_qr(h * dr + u + units, c) = w * p.W_q(h * d + i + half, c);
        }
      }
    }
    // What stays without rotation: k_h − Σ_j U[h][j]·k'_j (head h's key off the kept directions).
    for (std::size_t j = 0; j < m; ++j) {
      const std::size_t u = i * m + j;
      for (std::size_t h = 0; h < H; ++h) {
        const float w = s.U(h, j);
        for (std::size_t c = 0; c < D; ++c) {
          Wkn(h * d + i, c) -= w * out.W_kr(u, c);
          Wkn(h * d + i + half, c) -= w * out.W_kr(u + units, c);
        }
      }
    }
  }

  // Joint SVD of A = [W_K^nope; W_V] (2·H·d, D) as the inputs see it (A·B): its first r left
  // singular vectors U_r span the best rank-r subspace (Eckart–Young), and A ≈ U_r·(U_rᵀ·A), so
  // W^DKV = U_rᵀ·A (r, D) and [W^UK; W^UV] = U_r, exact when r reaches A's rank.
  Mat A = xt::empty<float>({2 * H * d, D});
  std::copy(Wkn.begin(), Wkn.end(), A.begin());
  std::copy(p.W_v.begin(), p.W_v.end(), A.begin() + static_cast<std::ptrdiff_t>(Wkn.size()));
  const Svd a = svd(matmul(A, B));
  out.singular_values = a.s;
  const std::size_t r = o.rank;
  Mat Ut = xt::empty<float>({r, 2 * H * d});  // U_rᵀ
  for (std::size_t k = 0; k < r; ++k) {
    for (std::size_t row = 0; row < 2 * H * d; ++row) Ut(k, row) = a.U(row, k);
  }
  out.W_dkv = matmul(Ut, A);
  out.W_uk = xt::empty<float>({H * d, r});
  out.W_uv = xt::empty<float>({H * d, r});
  for (std::size_t row = 0; row < H * d; ++row) {
    for (std::size_t k = 0; k < r; ++k) {
      out.W_uk(row, k) = a.U(row, k);
      out.W_uv(row, k) = a.U(H * d + row, k);
    }
  }
  return out;
}

}  // namespace mla::ch04
