// nflows' LU-linear layer (W = L U, L unit lower, U upper with diagonal softplus(d) + eps) as one op with its
// backward: y = x Wᵀ + b and log|det W| = Σ log diag, or the inverse x = (y − b) W⁻ᵀ. A small flow's LU layer is
// a few products of D×D matrices, where a dozen separate autograd nodes cost far more than the arithmetic.
// On the CPU with D <= kLoopMaxFeatures: plain loops (a 2×2 layer's arithmetic is a few dozen flops; each ATen
// call costs microseconds). Otherwise ATen ops (CPU and CUDA).
//
// Backward: ∂W = ∂yᵀ x, ∂L = ∂W Uᵀ, ∂U = Lᵀ ∂W; for the inverse ∂(W⁻¹) = ∂xᵀ (y − b) and ∂W = −W⁻ᵀ ∂(W⁻¹) W⁻ᵀ;
// the diagonal through softplus (its derivative is the sigmoid).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <vector>

namespace mflow {
namespace {

constexpr int64_t kLoopMaxFeatures = 16;

bool use_loops(const at::Tensor& x) { return !x.is_cuda() && x.size(1) <= kLoopMaxFeatures; }

template <typename T>
T softplus(T v) {  // as torch.nn.functional.softplus (beta 1, threshold 20)
  return v > T(20) ? v : std::log1p(std::exp(v));
}

// L (unit lower), U (upper, diagonal softplus + eps), and W = L U or W⁻¹ = U⁻¹ L⁻¹, all row-major D×D.
template <typename T>
void build_matrices(const T* lower_e, const T* upper_e, const T* ud, const int64_t* lower_pos,
                    const int64_t* upper_pos, int64_t d, double eps, bool inverse, T* lower, T* upper, T* diag,
                    T* matrix) {
  const int64_t n_off = d * (d - 1) / 2;
  for (int64_t e = 0; e < d * d; ++e) lower[e] = upper[e] = T(0);
  for (int64_t i = 0; i < d; ++i) lower[i * d + i] = T(1);
  for (int64_t e = 0; e < n_off; ++e) lower[lower_pos[e]] = lower_e[e];
  for (int64_t e = 0; e < n_off; ++e) upper[upper_pos[e]] = upper_e[e];
  for (int64_t i = 0; i < d; ++i) upper[upper_pos[n_off + i]] = diag[i] = softplus(ud[i]) + T(eps);
  if (!inverse) {
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j) {
        T acc = 0;
        for (int64_t k = 0; k <= std::min(i, j); ++k) acc += lower[i * d + k] * upper[k * d + j];
        matrix[i * d + j] = acc;
      }
    return;
  }
  // column j of W⁻¹: solve L y = e_j (unit lower), then U z = y
  std::vector<T> y(d);
  for (int64_t j = 0; j < d; ++j) {
    for (int64_t i = 0; i < d; ++i) {
      T acc = i == j ? T(1) : T(0);
      for (int64_t k = 0; k < i; ++k) acc -= lower[i * d + k] * y[k];
      y[i] = acc;
    }
    for (int64_t i = d - 1; i >= 0; --i) {
      T acc = y[i];
      for (int64_t k = i + 1; k < d; ++k) acc -= upper[i * d + k] * matrix[k * d + j];
      matrix[i * d + j] = acc / upper[i * d + i];
    }
  }
}

std::vector<at::Tensor> forward_loops(const at::Tensor& x, const at::Tensor& lower_entries,
                                      const at::Tensor& upper_entries, const at::Tensor& unconstrained_diag,
                                      const at::Tensor& bias, const at::Tensor& lower_flat,
                                      const at::Tensor& upper_flat, double eps, bool inverse) {
  const int64_t n = x.size(0), d = x.size(1);
  const at::Tensor xc = x.contiguous(), bc = bias.contiguous();
  at::Tensor out = at::empty_like(xc), log_det = at::empty({n}, x.options());
  at::Tensor lower = at::empty({d, d}, x.options()), upper = at::empty({d, d}, x.options());
  at::Tensor diag = at::empty({d}, x.options()), matrix = at::empty({d, d}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lu_linear_forward", [&] {
    scalar_t* m = matrix.data_ptr<scalar_t>();
    scalar_t* dg = diag.data_ptr<scalar_t>();
    build_matrices<scalar_t>(lower_entries.contiguous().data_ptr<scalar_t>(),
                             upper_entries.contiguous().data_ptr<scalar_t>(),
                             unconstrained_diag.contiguous().data_ptr<scalar_t>(), lower_flat.data_ptr<int64_t>(),
                             upper_flat.data_ptr<int64_t>(), d, eps, inverse, lower.data_ptr<scalar_t>(),
                             upper.data_ptr<scalar_t>(), dg, m);
    scalar_t ld = 0;
    for (int64_t i = 0; i < d; ++i) ld += std::log(dg[i]);
    if (inverse) ld = -ld;
    const scalar_t* b = bc.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* lp = log_det.data_ptr<scalar_t>();
    scalar_t row[kLoopMaxFeatures];
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t j = 0; j < d; ++j) row[j] = inverse ? xp[r * d + j] - b[j] : xp[r * d + j];
      for (int64_t i = 0; i < d; ++i) {
        scalar_t acc = inverse ? scalar_t(0) : b[i];
        for (int64_t j = 0; j < d; ++j) acc += m[i * d + j] * row[j];
        op[r * d + i] = acc;
      }
      lp[r] = ld;
    }
  });
  return {out, log_det, lower, upper, diag, matrix};
}

std::vector<at::Tensor> backward_loops(const at::Tensor& g_out, const at::Tensor& g_log_det, const at::Tensor& x,
                                       const at::Tensor& bias, const std::vector<at::Tensor>& saved,
                                       const at::Tensor& unconstrained_diag, const at::Tensor& lower_flat,
                                       const at::Tensor& upper_flat, bool inverse) {
  const int64_t n = x.size(0), d = x.size(1), n_off = d * (d - 1) / 2;
  const at::Tensor go = g_out.contiguous(), xc = x.contiguous(), bc = bias.contiguous();
  const at::Tensor glc = g_log_det.contiguous(), udc = unconstrained_diag.contiguous();
  at::Tensor g_x = at::empty_like(xc), g_bias = at::zeros_like(bias);
  at::Tensor g_lower = at::empty({n_off}, x.options()), g_upper = at::empty({n_off}, x.options());
  at::Tensor g_ud = at::empty({d}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lu_linear_backward", [&] {
    const scalar_t* lower = saved[0].data_ptr<scalar_t>();
    const scalar_t* upper = saved[1].data_ptr<scalar_t>();
    const scalar_t* dg = saved[2].data_ptr<scalar_t>();
    const scalar_t* m = saved[3].data_ptr<scalar_t>();
    const scalar_t* b = bc.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* gp = go.data_ptr<scalar_t>();
    scalar_t* gxp = g_x.data_ptr<scalar_t>();
    scalar_t* gbp = g_bias.data_ptr<scalar_t>();
    std::vector<scalar_t> G(d * d, scalar_t(0)), gw(d * d), tmp(d * d);
    scalar_t g_ld = 0;
    const scalar_t* gl = glc.data_ptr<scalar_t>();
    for (int64_t r = 0; r < n; ++r) {
      g_ld += gl[r];
      for (int64_t j = 0; j < d; ++j) {
        scalar_t acc = 0;
        for (int64_t i = 0; i < d; ++i) acc += gp[r * d + i] * m[i * d + j];
        gxp[r * d + j] = acc;
        gbp[j] += inverse ? -acc : gp[r * d + j];
      }
      for (int64_t i = 0; i < d; ++i)
        for (int64_t j = 0; j < d; ++j) G[i * d + j] += gp[r * d + i] * (inverse ? xp[r * d + j] - b[j] : xp[r * d + j]);
    }
    if (inverse) {  // ∂W = −W⁻ᵀ G W⁻ᵀ
      for (int64_t i = 0; i < d; ++i)
        for (int64_t j = 0; j < d; ++j) {
          scalar_t acc = 0;
          for (int64_t k = 0; k < d; ++k) acc += m[k * d + i] * G[k * d + j];
          tmp[i * d + j] = acc;
        }
      for (int64_t i = 0; i < d; ++i)
        for (int64_t j = 0; j < d; ++j) {
          scalar_t acc = 0;
          for (int64_t k = 0; k < d; ++k) acc += tmp[i * d + k] * m[j * d + k];
          gw[i * d + j] = -acc;
        }
    } else {
      gw = G;
    }
    const int64_t* lower_pos = lower_flat.data_ptr<int64_t>();
    const int64_t* upper_pos = upper_flat.data_ptr<int64_t>();
    auto g_l = [&](int64_t e) {  // (∂W Uᵀ)[i, j]
      const int64_t i = e / d, j = e % d;
      scalar_t acc = 0;
      for (int64_t k = 0; k < d; ++k) acc += gw[i * d + k] * upper[j * d + k];
      return acc;
    };
    auto g_u = [&](int64_t e) {  // (Lᵀ ∂W)[i, j]
      const int64_t i = e / d, j = e % d;
      scalar_t acc = 0;
      for (int64_t k = 0; k < d; ++k) acc += lower[k * d + i] * gw[k * d + j];
      return acc;
    };
    scalar_t* glp = g_lower.data_ptr<scalar_t>();
    scalar_t* gup = g_upper.data_ptr<scalar_t>();
    scalar_t* gdp = g_ud.data_ptr<scalar_t>();
    const scalar_t* udp = udc.data_ptr<scalar_t>();
    for (int64_t e = 0; e < n_off; ++e) glp[e] = g_l(lower_pos[e]);
    for (int64_t e = 0; e < n_off; ++e) gup[e] = g_u(upper_pos[e]);
    for (int64_t i = 0; i < d; ++i) {
      const scalar_t g_diag = g_u(upper_pos[n_off + i]) + (inverse ? -g_ld : g_ld) / dg[i];
      gdp[i] = g_diag / (scalar_t(1) + std::exp(-udp[i]));  // softplus' = sigmoid
    }
  });
  return {g_x, g_lower, g_upper, g_ud, g_bias};
}

}  // namespace

// Returns out, log|det| (N,), and what backward needs besides x and b: L, U, diag, W (or W⁻¹).
std::vector<at::Tensor> lu_linear_forward(const at::Tensor& x, const at::Tensor& lower_entries,
                                          const at::Tensor& upper_entries, const at::Tensor& unconstrained_diag,
                                          const at::Tensor& bias, const at::Tensor& lower_flat,
                                          const at::Tensor& upper_flat, double eps, bool inverse) {
  if (use_loops(x)) {
    return forward_loops(x, lower_entries, upper_entries, unconstrained_diag, bias, lower_flat, upper_flat, eps, inverse);
  }
  const int64_t d = bias.size(0);
  const at::Tensor diag = at::softplus(unconstrained_diag).add_(eps);
  const at::Tensor eye = at::eye(d, x.options());
  const at::Tensor zeros = at::zeros({d * d}, x.options());
  const at::Tensor lower = zeros.scatter(0, lower_flat, lower_entries).view({d, d}).add_(eye);
  const at::Tensor upper = zeros.scatter(0, upper_flat, at::cat({upper_entries, diag})).view({d, d});
  at::Tensor log_det = diag.log().sum();
  if (inverse) {
    const at::Tensor w_inv = at::linalg_solve_triangular(
        upper, at::linalg_solve_triangular(lower, eye, /*upper=*/false, /*left=*/true, /*unitriangular=*/true),
        /*upper=*/true);
    return {at::mm(x - bias, w_inv.t()), log_det.neg().expand({x.size(0)}), lower, upper, diag, w_inv};
  }
  const at::Tensor weight = at::mm(lower, upper);
  return {at::addmm(bias, x, weight.t()), log_det.expand({x.size(0)}), lower, upper, diag, weight};
}

// Gradients of (x, lower entries, upper entries, unconstrained diagonal, bias).
std::vector<at::Tensor> lu_linear_backward(const at::Tensor& g_out, const at::Tensor& g_log_det, const at::Tensor& x,
                                           const at::Tensor& bias, const std::vector<at::Tensor>& saved,
                                           const at::Tensor& unconstrained_diag, const at::Tensor& lower_flat,
                                           const at::Tensor& upper_flat, bool inverse) {
  if (use_loops(x)) {
    return backward_loops(g_out, g_log_det, x, bias, saved, unconstrained_diag, lower_flat, upper_flat, inverse);
  }
  const at::Tensor inputs = inverse ? x - bias : x;
  const at::Tensor& lower = saved[0];
  const at::Tensor& upper = saved[1];
  const at::Tensor& diag = saved[2];
  const at::Tensor& matrix = saved[3];
  const int64_t d = diag.size(0);
  const at::Tensor g_x = at::mm(g_out, matrix);
  const at::Tensor g_matrix = at::mm(g_out.t(), inputs);
  const at::Tensor g_bias = inverse ? g_x.sum(0).neg() : g_out.sum(0);
  const at::Tensor g_weight = inverse ? at::mm(at::mm(matrix.t(), g_matrix), matrix.t()).neg() : g_matrix;
  const at::Tensor g_lower = at::mm(g_weight, upper.t()).reshape({-1}).index_select(0, lower_flat);
  const at::Tensor g_upper = at::mm(lower.t(), g_weight).reshape({-1}).index_select(0, upper_flat);
  const int64_t n_upper = g_upper.size(0) - d;
  const at::Tensor g_sum = g_log_det.sum();
  const at::Tensor g_diag = g_upper.narrow(0, n_upper, d) + (inverse ? g_sum.neg() : g_sum) / diag;
  return {g_x, g_lower, g_upper.narrow(0, 0, n_upper), g_diag * at::sigmoid(unconstrained_diag), g_bias};
}

}  // namespace mflow
