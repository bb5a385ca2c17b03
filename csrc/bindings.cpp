// Python bindings of the fused ops (module mflow_cli._C); each op runs on the device of its inputs.
// Inputs are expected contiguous, of one floating dtype, with int64 feature indices (the Python
// side in mflow_cli/kernels/ guarantees this); checks here guard against misuse.
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "ops.h"

namespace mflow {
namespace {

void check_inputs(const at::Tensor& x, const at::Tensor& params, const at::Tensor& tidx, int64_t params_dim) {
  TORCH_CHECK(x.dim() == 2, "x must be (N, D)");
  TORCH_CHECK(params.dim() == params_dim && params.size(0) == x.size(0), "params must match the batch of x");
  TORCH_CHECK(x.is_contiguous() && params.is_contiguous() && tidx.is_contiguous(), "inputs must be contiguous");
  TORCH_CHECK(params.scalar_type() == x.scalar_type(), "x and params must share a dtype");
  TORCH_CHECK(tidx.scalar_type() == at::kLong && tidx.dim() == 1, "feature indices must be int64 (F,)");
  TORCH_CHECK(params.device() == x.device() && tidx.device() == x.device(), "inputs must share a device");
}

SplineArgs spline_args(int64_t num_bins, double tail_bound, double min_w, double min_h, double min_d, double divisor) {
  TORCH_CHECK(num_bins >= 1 && num_bins <= 64, "num_bins must be in 1..64");
  return SplineArgs{num_bins, tail_bound, min_w, min_h, min_d, divisor};
}

#ifdef MFLOW_WITH_CUDA
#define MFLOW_CALL(name, x, ...) ((x).is_cuda() ? name##_cuda(__VA_ARGS__) : name##_cpu(__VA_ARGS__))
#else
inline void require_cpu(const at::Tensor& x) { TORCH_CHECK(!x.is_cuda(), "mflow_cli._C was built without CUDA"); }
#define MFLOW_CALL(name, x, ...) (require_cpu(x), name##_cpu(__VA_ARGS__))
#endif

std::tuple<at::Tensor, at::Tensor> py_rq_forward(const at::Tensor& x, const at::Tensor& params, const at::Tensor& tidx,
                                              bool inverse, int64_t num_bins, double tail_bound, double min_w,
                                              double min_h, double min_d, double divisor) {
  check_inputs(x, params, tidx, 3);
  TORCH_CHECK(params.size(1) == tidx.size(0) && params.size(2) == 3 * num_bins - 1, "params must be (N, F, 3K-1)");
  const SplineArgs a = spline_args(num_bins, tail_bound, min_w, min_h, min_d, divisor);
  return MFLOW_CALL(rq_forward, x, x, params, tidx, inverse, a);
}

std::tuple<at::Tensor, at::Tensor> py_rq_backward(const at::Tensor& x, const at::Tensor& params, const at::Tensor& tidx,
                                               const at::Tensor& g_out, const at::Tensor& g_ld, bool inverse,
                                               int64_t num_bins, double tail_bound, double min_w, double min_h,
                                               double min_d, double divisor) {
  check_inputs(x, params, tidx, 3);
  TORCH_CHECK(g_out.sizes() == x.sizes() && g_out.is_contiguous() && g_ld.is_contiguous(), "bad gradients");
  const SplineArgs a = spline_args(num_bins, tail_bound, min_w, min_h, min_d, divisor);
  return MFLOW_CALL(rq_backward, x, x, params, tidx, g_out, g_ld, inverse, a);
}

std::tuple<at::Tensor, at::Tensor> py_rq_jvp(const at::Tensor& x, const at::Tensor& params, const at::Tensor& tidx,
                                          const at::Tensor& tx, const at::Tensor& tparams, bool inverse,
                                          int64_t num_bins, double tail_bound, double min_w, double min_h,
                                          double min_d, double divisor) {
  check_inputs(x, params, tidx, 3);
  TORCH_CHECK(tx.sizes() == x.sizes() && tparams.sizes() == params.sizes(), "bad tangents");
  TORCH_CHECK(tx.is_contiguous() && tparams.is_contiguous(), "tangents must be contiguous");
  const SplineArgs a = spline_args(num_bins, tail_bound, min_w, min_h, min_d, divisor);
  return MFLOW_CALL(rq_jvp, x, x, params, tidx, tx, tparams, inverse, a);
}

std::tuple<at::Tensor, at::Tensor> py_affine_forward(const at::Tensor& x, const at::Tensor& params,
                                                  const at::Tensor& tidx, bool inverse) {
  check_inputs(x, params, tidx, 2);
  TORCH_CHECK(params.size(1) == 2 * tidx.size(0), "params must be (N, 2F)");
  return MFLOW_CALL(affine_forward, x, x, params, tidx, inverse);
}

std::tuple<at::Tensor, at::Tensor> py_affine_backward(const at::Tensor& x, const at::Tensor& params,
                                                   const at::Tensor& tidx, const at::Tensor& g_out,
                                                   const at::Tensor& g_ld, bool inverse) {
  check_inputs(x, params, tidx, 2);
  TORCH_CHECK(g_out.sizes() == x.sizes() && g_out.is_contiguous() && g_ld.is_contiguous(), "bad gradients");
  return MFLOW_CALL(affine_backward, x, x, params, tidx, g_out, g_ld, inverse);
}

std::tuple<at::Tensor, at::Tensor> py_affine_jvp(const at::Tensor& x, const at::Tensor& params, const at::Tensor& tidx,
                                              const at::Tensor& tx, const at::Tensor& tparams, bool inverse) {
  check_inputs(x, params, tidx, 2);
  TORCH_CHECK(tx.sizes() == x.sizes() && tparams.sizes() == params.sizes(), "bad tangents");
  return MFLOW_CALL(affine_jvp, x, x, params, tidx, tx, tparams, inverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> py_logdet_gram_forward(const at::Tensor& jac) {
  TORCH_CHECK(jac.dim() == 3 && jac.is_contiguous(), "jac must be a contiguous (B, D, d) tensor");
  TORCH_CHECK(jac.size(2) <= 128 && jac.size(2) <= jac.size(1), "jac must be thin: d <= min(D, 128)");
  return MFLOW_CALL(logdet_gram_forward, jac, jac);
}

at::Tensor py_logdet_gram_backward(const at::Tensor& jac, const at::Tensor& chol, const at::Tensor& g) {
  TORCH_CHECK(jac.is_contiguous() && chol.is_contiguous() && g.is_contiguous(), "inputs must be contiguous");
  return MFLOW_CALL(logdet_gram_backward, jac, jac, chol, g);
}

at::Tensor py_flow_tangents(const at::Tensor& state, int64_t rows, bool inverse, const std::vector<int64_t>& kinds,
                            const std::vector<at::Tensor>& tensors, const std::vector<int64_t>& ints,
                            const std::vector<double>& doubles) {
  TORCH_CHECK(state.dim() == 2 && rows > 0 && state.size(0) % rows == 0, "state must be ((k + 1) * rows, D)");
  TORCH_CHECK(!state.is_cuda() && (state.scalar_type() == at::kFloat || state.scalar_type() == at::kDouble),
              "flow_tangents runs on float32/float64 CPU tensors");
  size_t ti = 0, ii = 0, di = 0;
  for (const int64_t kind : kinds) {  // the program's shape; each kernel checks its own operands
    TORCH_CHECK(kind >= 0 && kind <= 2, "unknown step kind");
    const size_t blocks = kind == 0 ? 0 : static_cast<size_t>(ints.at(ii));
    ti += kind == 0 ? 2 : 6 + 4 * blocks;
    ii += kind == 0 ? 0 : (kind == 1 ? 2 : 1);
    di += kind == 1 ? 5 : 0;
    if (kind == 1) spline_args(ints.at(ii - 1), 0, 0, 0, 0, 1);
  }
  TORCH_CHECK(ti == tensors.size() && ii == ints.size() && di == doubles.size(), "malformed program");
  for (const at::Tensor& t : tensors) {
    TORCH_CHECK(t.device() == state.device() && t.is_contiguous(), "program tensors must be contiguous, on the CPU");
    TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == state.scalar_type(), "program dtype mismatch");
  }
  return flow_tangents_cpu(state, rows, inverse, kinds, tensors, ints, doubles);
}

void check_residual_net(const at::Tensor& x, const std::vector<at::Tensor>& p) {
  TORCH_CHECK(x.dim() == 2 && p.size() >= 4 && p.size() % 4 == 0, "residual_net: x (N, in) and 4 + 4 * blocks tensors");
  for (const at::Tensor& t : p) {
    TORCH_CHECK(t.device() == x.device() && t.scalar_type() == x.scalar_type(), "residual_net: one device and dtype");
  }
}

std::vector<at::Tensor> py_residual_net_forward(const at::Tensor& x, const std::vector<at::Tensor>& p) {
  check_residual_net(x, p);
  return residual_net_forward(x, p);
}

std::vector<at::Tensor> py_residual_net_backward(const at::Tensor& g_out, const at::Tensor& x,
                                                 const std::vector<at::Tensor>& p,
                                                 const std::vector<at::Tensor>& saved, bool need_x) {
  check_residual_net(x, p);
  TORCH_CHECK(saved.size() == (p.size() - 4) / 2 + 1, "residual_net: the tensors its forward saved");
  return residual_net_backward(g_out, x, p, saved, need_x);
}

std::vector<at::Tensor> py_lu_linear_forward(const at::Tensor& x, const at::Tensor& lower_entries,
                                             const at::Tensor& upper_entries, const at::Tensor& unconstrained_diag,
                                             const at::Tensor& bias, const at::Tensor& lower_flat,
                                             const at::Tensor& upper_flat, double eps, bool inverse) {
  const int64_t d = bias.dim() == 1 ? bias.size(0) : -1;
  TORCH_CHECK(x.dim() == 2 && x.size(1) == d, "lu_linear: x must be (N, D) with D the layer's features");
  TORCH_CHECK(lower_entries.numel() == d * (d - 1) / 2 && upper_entries.numel() == d * (d - 1) / 2 &&
                  unconstrained_diag.numel() == d,
              "lu_linear: D(D-1)/2 lower and upper entries and D diagonal ones");
  TORCH_CHECK(lower_flat.numel() == d * (d - 1) / 2 && upper_flat.numel() == d * (d + 1) / 2 &&
                  lower_flat.scalar_type() == at::kLong && upper_flat.scalar_type() == at::kLong,
              "lu_linear: int64 flat positions of the lower entries and of the upper entries then the diagonal");
  return lu_linear_forward(x, lower_entries, upper_entries, unconstrained_diag, bias, lower_flat, upper_flat, eps,
                           inverse);
}

std::vector<at::Tensor> py_lu_linear_backward(const at::Tensor& g_out, const at::Tensor& g_log_det,
                                              const at::Tensor& x, const at::Tensor& bias,
                                              const std::vector<at::Tensor>& saved,
                                              const at::Tensor& unconstrained_diag, const at::Tensor& lower_flat,
                                              const at::Tensor& upper_flat, bool inverse) {
  TORCH_CHECK(saved.size() == 4, "lu_linear: the four tensors its forward saved");
  TORCH_CHECK(g_out.sizes() == x.sizes(), "lu_linear: the gradient must match x");
  return lu_linear_backward(g_out, g_log_det, x, bias, saved, unconstrained_diag, lower_flat, upper_flat, inverse);
}

// The program's shape (flow_pass.cpp documents it): the saved-tensor count its forward leaves, or an error.
size_t check_flow_pass(const at::Tensor& x, const std::vector<int64_t>& kinds, const std::vector<at::Tensor>& tensors,
                       const std::vector<int64_t>& ints, const std::vector<double>& doubles) {
  TORCH_CHECK(x.dim() == 2 && !x.is_cuda() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "flow_pass runs on (N, D) float32/float64 CPU tensors");
  const std::vector<FlowPassStep> layout = flow_pass_layout(kinds, ints);
  for (size_t step = 0; step < kinds.size(); ++step) {
    if (kinds[step] == 2) spline_args(ints.at(layout[step].ints + 1), 0, 0, 0, 0, 1);
  }
  const FlowPassStep& total = layout.back();
  TORCH_CHECK(total.tensors == tensors.size() && total.ints == ints.size() && total.doubles == doubles.size(),
              "malformed program");
  for (const at::Tensor& t : tensors) {
    TORCH_CHECK(t.device() == x.device() && t.is_contiguous(), "program tensors must be contiguous, on the CPU");
    TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == x.scalar_type(), "program dtype mismatch");
  }
  return total.saved;
}

std::vector<at::Tensor> py_flow_pass_forward(const at::Tensor& x, bool inverse, const std::vector<int64_t>& kinds,
                                             const std::vector<at::Tensor>& tensors, const std::vector<int64_t>& ints,
                                             const std::vector<double>& doubles, bool save) {
  check_flow_pass(x, kinds, tensors, ints, doubles);
  return flow_pass_forward_cpu(x, inverse, kinds, tensors, ints, doubles, save);
}

std::vector<at::Tensor> py_flow_pass_backward(const at::Tensor& g_y, const at::Tensor& g_logdet, bool inverse,
                                              const std::vector<int64_t>& kinds,
                                              const std::vector<at::Tensor>& tensors,
                                              const std::vector<int64_t>& ints, const std::vector<double>& doubles,
                                              const std::vector<at::Tensor>& saved) {
  TORCH_CHECK(saved.size() == check_flow_pass(g_y, kinds, tensors, ints, doubles),
              "flow_pass: the tensors its forward saved");
  TORCH_CHECK(g_logdet.dim() == 1 && g_logdet.size(0) == g_y.size(0), "flow_pass: bad gradients");
  return flow_pass_backward_cpu(g_y, g_logdet, inverse, kinds, tensors, ints, doubles, saved);
}

// z (N, d) and params (P, K, 2d + 1), contiguous, one floating dtype, on the CPU; N a multiple of P.
void check_planar_chain(const at::Tensor& z, const at::Tensor& params) {
  TORCH_CHECK(z.dim() == 2 && params.dim() == 3 && params.size(2) == 2 * z.size(1) + 1,
              "planar_chain: z (N, d) and params (P, K, 2d + 1)");
  TORCH_CHECK(params.size(0) > 0 && z.size(0) % params.size(0) == 0, "planar_chain: N must be a multiple of P");
  TORCH_CHECK(!z.is_cuda() && !params.is_cuda() && z.is_contiguous() && params.is_contiguous() &&
                  params.scalar_type() == z.scalar_type() &&
                  (z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble),
              "planar_chain: contiguous float32/float64 CPU tensors of one dtype");
}

std::vector<at::Tensor> py_planar_chain_forward(const at::Tensor& z, const at::Tensor& params, bool save) {
  check_planar_chain(z, params);
  return planar_chain_forward_cpu(z, params, save);
}

std::vector<at::Tensor> py_planar_chain_backward(const at::Tensor& g_out, const at::Tensor& g_logdet,
                                                 const at::Tensor& saved, const at::Tensor& params) {
  check_planar_chain(g_out, params);
  TORCH_CHECK(g_logdet.dim() == 1 && g_logdet.size(0) == g_out.size(0) && g_logdet.is_contiguous() &&
                  g_logdet.scalar_type() == g_out.scalar_type(),
              "planar_chain: the log-det gradient must be (N,)");
  TORCH_CHECK(saved.dim() == 3 && saved.size(0) == g_out.size(0) && saved.size(1) == params.size(1) &&
                  saved.size(2) == g_out.size(1) && saved.is_contiguous() &&
                  saved.scalar_type() == g_out.scalar_type(),
              "planar_chain: the (N, K, d) inputs its forward saved");
  return planar_chain_backward_cpu(g_out, g_logdet, saved, params);
}

std::vector<at::Tensor> py_symmetric_eigh(const at::Tensor& a) {
  TORCH_CHECK(a.dim() == 3 && a.size(1) == a.size(2) && a.size(1) > 0, "symmetric_eigh: a (B, n, n)");
  TORCH_CHECK(!a.is_cuda() && a.is_contiguous() && (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble),
              "symmetric_eigh: a contiguous float32/float64 CPU tensor");
  return symmetric_eigh_cpu(a);
}

void check_polar_operand(const at::Tensor& t, const at::Tensor& like, at::IntArrayRef shape, const char* what) {
  TORCH_CHECK(t.sizes() == shape && !t.is_cuda() && t.is_contiguous() && t.scalar_type() == like.scalar_type(),
              "polar_factor: ", what, " must be a contiguous CPU tensor of shape ", shape, " and dtype ",
              like.scalar_type());
}

std::vector<at::Tensor> py_polar_factor_forward(const at::Tensor& q) {
  TORCH_CHECK(q.dim() == 3 && q.size(2) > 0 && q.size(1) >= q.size(2), "polar_factor: q (B, d, M) with M <= d");
  TORCH_CHECK(!q.is_cuda() && q.is_contiguous() && (q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble),
              "polar_factor: q a contiguous float32/float64 CPU tensor");
  return polar_factor_forward_cpu(q);
}

at::Tensor py_polar_factor_backward(const at::Tensor& grad_u, const at::Tensor& u, const at::Tensor& basis,
                                    const at::Tensor& roots, const at::Tensor& p_inverse) {
  TORCH_CHECK(u.dim() == 3 && u.size(2) > 0 && u.size(1) >= u.size(2), "polar_factor: u (B, d, M) with M <= d");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble, "polar_factor: float32/float64");
  const int64_t b = u.size(0), m = u.size(2);
  check_polar_operand(u, u, u.sizes(), "u");
  check_polar_operand(grad_u, u, u.sizes(), "the gradient of u");
  check_polar_operand(basis, u, {b, m, m}, "the eigenvectors");
  check_polar_operand(roots, u, {b, m}, "the roots");
  check_polar_operand(p_inverse, u, {b, m, m}, "P^-1");
  return polar_factor_backward_cpu(grad_u, u, basis, roots, p_inverse);
}

}  // namespace
}  // namespace mflow

PYBIND11_MODULE(_C, m) {
  m.doc() = "mflow fused kernels: RQ-spline and affine coupling, log det(JᵀJ)";
#ifdef MFLOW_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("rq_forward", &mflow::py_rq_forward);
  m.def("rq_backward", &mflow::py_rq_backward);
  m.def("rq_jvp", &mflow::py_rq_jvp);
  m.def("affine_forward", &mflow::py_affine_forward);
  m.def("affine_backward", &mflow::py_affine_backward);
  m.def("affine_jvp", &mflow::py_affine_jvp);
  m.def("logdet_gram_forward", &mflow::py_logdet_gram_forward);
  m.def("logdet_gram_backward", &mflow::py_logdet_gram_backward);
  m.def("flow_tangents", &mflow::py_flow_tangents);
  m.def("residual_net_forward", &mflow::py_residual_net_forward);
  m.def("residual_net_backward", &mflow::py_residual_net_backward);
  m.def("lu_linear_forward", &mflow::py_lu_linear_forward);
  m.def("lu_linear_backward", &mflow::py_lu_linear_backward);
  m.def("flow_pass_forward", &mflow::py_flow_pass_forward);
  m.def("flow_pass_backward", &mflow::py_flow_pass_backward);
  m.def("planar_chain_forward", &mflow::py_planar_chain_forward);
  m.def("planar_chain_backward", &mflow::py_planar_chain_backward);
  m.def("symmetric_eigh", &mflow::py_symmetric_eigh);
  m.def("polar_factor_forward", &mflow::py_polar_factor_forward);
  m.def("polar_factor_backward", &mflow::py_polar_factor_backward);
}
