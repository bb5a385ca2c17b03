// Declarations of the fused ops; CPU versions in cpu_ops.cpp, CUDA versions in cuda_ops.cu.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "elementwise.h"

namespace mflow {

struct SplineArgs {
  int64_t num_bins;
  double tail_bound, min_bin_width, min_bin_height, min_derivative, divisor;
};

inline SplineConfig make_config(const SplineArgs& a) {
  SplineConfig c;
  c.num_bins = static_cast<int>(a.num_bins);
  c.tail_bound = a.tail_bound;
  c.min_bin_width = a.min_bin_width;
  c.min_bin_height = a.min_bin_height;
  c.min_derivative = a.min_derivative;
  c.divisor = a.divisor;
  const double raw = std::log(std::exp(1.0 - a.min_derivative) - 1.0);
  c.boundary_derivative = a.min_derivative + (raw > 20.0 ? raw : std::log1p(std::exp(raw)));
  return c;
}

#define MFLOW_DECLARE_OPS(dev)                                                                                   \
  std::tuple<at::Tensor, at::Tensor> rq_forward_##dev(const at::Tensor& x, const at::Tensor& params,           \
                                                      const at::Tensor& tidx, bool inverse, const SplineArgs& a); \
  std::tuple<at::Tensor, at::Tensor> rq_backward_##dev(const at::Tensor& x, const at::Tensor& params,          \
                                                       const at::Tensor& tidx, const at::Tensor& g_out,          \
                                                       const at::Tensor& g_ld, bool inverse, const SplineArgs& a); \
  std::tuple<at::Tensor, at::Tensor> rq_jvp_##dev(const at::Tensor& x, const at::Tensor& params,               \
                                                  const at::Tensor& tidx, const at::Tensor& tx,                  \
                                                  const at::Tensor& tparams, bool inverse, const SplineArgs& a); \
  std::tuple<at::Tensor, at::Tensor> affine_forward_##dev(const at::Tensor& x, const at::Tensor& params,       \
                                                          const at::Tensor& tidx, bool inverse);                 \
  std::tuple<at::Tensor, at::Tensor> affine_backward_##dev(const at::Tensor& x, const at::Tensor& params,      \
                                                           const at::Tensor& tidx, const at::Tensor& g_out,      \
                                                           const at::Tensor& g_ld, bool inverse);                \
  std::tuple<at::Tensor, at::Tensor> affine_jvp_##dev(const at::Tensor& x, const at::Tensor& params,           \
                                                      const at::Tensor& tidx, const at::Tensor& tx,              \
                                                      const at::Tensor& tparams, bool inverse);                  \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> logdet_gram_forward_##dev(const at::Tensor& jac);               \
  at::Tensor logdet_gram_backward_##dev(const at::Tensor& jac, const at::Tensor& chol, const at::Tensor& g);

MFLOW_DECLARE_OPS(cpu)

// nflows' ResidualNet with its backward (residual_net.cpp; ATen ops, any device).
std::vector<at::Tensor> residual_net_forward(const at::Tensor& x, const std::vector<at::Tensor>& p);
std::vector<at::Tensor> residual_net_backward(const at::Tensor& g_out, const at::Tensor& x,
                                              const std::vector<at::Tensor>& p, const std::vector<at::Tensor>& saved,
                                              bool need_x);

// nflows' LU-linear layer with its backward (lu_linear.cpp; ATen ops, any device).
std::vector<at::Tensor> lu_linear_forward(const at::Tensor& x, const at::Tensor& lower_entries,
                                          const at::Tensor& upper_entries, const at::Tensor& unconstrained_diag,
                                          const at::Tensor& bias, const at::Tensor& lower_flat,
                                          const at::Tensor& upper_flat, double eps, bool inverse);
std::vector<at::Tensor> lu_linear_backward(const at::Tensor& g_out, const at::Tensor& g_log_det, const at::Tensor& x,
                                           const at::Tensor& bias, const std::vector<at::Tensor>& saved,
                                           const at::Tensor& unconstrained_diag, const at::Tensor& lower_flat,
                                           const at::Tensor& upper_flat, bool inverse);

// A whole pass of a coupling stack with tangents (flow_tangents.cpp; CPU only).
at::Tensor flow_tangents_cpu(const at::Tensor& state, int64_t rows, bool inverse, const std::vector<int64_t>& kinds,
                             const std::vector<at::Tensor>& tensors, const std::vector<int64_t>& ints,
                             const std::vector<double>& doubles);
// A whole pass of a coupling stack for training, forward and backward (flow_pass.cpp; CPU only).
// flow_pass_layout: where each step's tensors, ints, doubles and saved tensors start, then the totals (one entry
// more than steps); refuses unknown kinds.
struct FlowPassStep {
  size_t tensors, ints, doubles, saved;
};
std::vector<FlowPassStep> flow_pass_layout(const std::vector<int64_t>& kinds, const std::vector<int64_t>& ints);
std::vector<at::Tensor> flow_pass_forward_cpu(const at::Tensor& x, bool inverse, const std::vector<int64_t>& kinds,
                                              const std::vector<at::Tensor>& tensors, const std::vector<int64_t>& ints,
                                              const std::vector<double>& doubles, bool save);
std::vector<at::Tensor> flow_pass_backward_cpu(const at::Tensor& g_y, const at::Tensor& g_logdet, bool inverse,
                                               const std::vector<int64_t>& kinds,
                                               const std::vector<at::Tensor>& tensors,
                                               const std::vector<int64_t>& ints, const std::vector<double>& doubles,
                                               const std::vector<at::Tensor>& saved);
// K planar steps of a flow-VAE posterior, forward (saving each step's input when asked) and backward
// (planar_chain.cpp; CPU only).
std::vector<at::Tensor> planar_chain_forward_cpu(const at::Tensor& z, const at::Tensor& params, bool save);
std::vector<at::Tensor> planar_chain_backward_cpu(const at::Tensor& g_out, const at::Tensor& g_logdet,
                                                  const at::Tensor& saved, const at::Tensor& params);
// The eigenvalues (ascending) and eigenvectors of a batch of small symmetric matrices (B, n, n), by the cyclic
// Jacobi method over 16 matrices at a time (symmetric_eigh.cpp; CPU only).
std::vector<at::Tensor> symmetric_eigh_cpu(const at::Tensor& a);
// The orthonormal polar factor U = Q (QᵀQ)^{-1/2} of a batch (B, d, M) and its gradient (polar_factor.cpp; CPU
// only): the forward returns U, the eigenvectors V and roots s of QᵀQ, and P⁻¹ = (QᵀQ)^{-1/2}.
std::vector<at::Tensor> polar_factor_forward_cpu(const at::Tensor& q);
at::Tensor polar_factor_backward_cpu(const at::Tensor& grad_u, const at::Tensor& u, const at::Tensor& basis,
                                     const at::Tensor& roots, const at::Tensor& p_inverse);
#ifdef MFLOW_WITH_CUDA
MFLOW_DECLARE_OPS(cuda)
#endif

}  // namespace mflow
