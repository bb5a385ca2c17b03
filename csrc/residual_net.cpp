// nflows' ResidualNet (ReLU, no batch norm, no context) as one op with its backward, for training: one
// autograd node per conditioner instead of about a dozen (linear layers, relus, residual adds). ATen ops
// only, so the same code serves CPU and CUDA tensors.
//
// Parameters in nflows' layout (weights (out, in)): W0, b0, then W1, b1, W2, b2 per block, then Wf, bf.
// Forward, per block:  a = relu(h),  a2 = relu(a W1ᵀ + b1),  h ← h + a2 W2ᵀ + b2;  out = h Wfᵀ + bf.
// Saved for backward: a and a2 of every block and the last h (the relu masks are a > 0 and a2 > 0).
#include <ATen/ATen.h>

#include <vector>

namespace mflow {

std::vector<at::Tensor> residual_net_forward(const at::Tensor& x, const std::vector<at::Tensor>& p) {
  const size_t blocks = (p.size() - 4) / 4;
  at::Tensor h = at::addmm(p[1], x, p[0].t());
  std::vector<at::Tensor> result{at::Tensor()};  // result[0]: the output, filled below
  for (size_t b = 0; b < blocks; ++b) {
    const at::Tensor* w = p.data() + 2 + 4 * b;
    at::Tensor a = at::relu(h);
    at::Tensor a2 = at::relu(at::addmm(w[1], a, w[0].t()));
    h = at::addmm(h, a2, w[2].t()).add_(w[3]);
    result.push_back(a);
    result.push_back(a2);
  }
  result[0] = at::addmm(p[p.size() - 1], h, p[p.size() - 2].t());
  result.push_back(h);
  return result;
}

// Gradients (x, W0, b0, W1, b1, W2, b2, ..., Wf, bf); the first is undefined unless need_x.
std::vector<at::Tensor> residual_net_backward(const at::Tensor& g_out, const at::Tensor& x,
                                              const std::vector<at::Tensor>& p, const std::vector<at::Tensor>& saved,
                                              bool need_x) {
  const size_t blocks = (p.size() - 4) / 4;
  std::vector<at::Tensor> g(p.size() + 1);
  const at::Tensor& h_last = saved.back();
  g[p.size() - 1] = g_out.t().mm(h_last);  // dWf (Wf sits at p[size - 2], its gradient at g[size - 1])
  g[p.size()] = g_out.sum(0);
  at::Tensor g_h = g_out.mm(p[p.size() - 2]);
  for (size_t b = blocks; b-- > 0;) {
    const at::Tensor* w = p.data() + 2 + 4 * b;
    const at::Tensor& a = saved[2 * b];
    const at::Tensor& a2 = saved[2 * b + 1];
    at::Tensor* gw = g.data() + 3 + 4 * b;
    gw[2] = g_h.t().mm(a2);
    gw[3] = g_h.sum(0);
    const at::Tensor g_z = at::threshold_backward(g_h.mm(w[2]), a2, 0);
    gw[0] = g_z.t().mm(a);
    gw[1] = g_z.sum(0);
    g_h = g_h + at::threshold_backward(g_z.mm(w[0]), a, 0);
  }
  g[1] = g_h.t().mm(x);
  g[2] = g_h.sum(0);
  if (need_x) g[0] = g_h.mm(p[0]);
  return g;
}

}  // namespace mflow
