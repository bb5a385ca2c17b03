// One pass of a coupling stack for training, in one native call forward and one backward (CPU): a 2-D flow's
// training step is about as much per-layer Python and autograd bookkeeping as arithmetic, so the whole pass is
// one autograd node (mflow_cli/kernels/functions.py, FlowPassFn) built from the single-layer ops of
// lu_linear.cpp, residual_net.cpp and cpu_ops.cpp.
//
// The program, step by step in the order the pass runs them (kinds[i]):
//   0 permutation:        tensors idx (D), its inverse (D)              y = x[:, idx]
//   1 LU linear:          tensors lower, upper, unconstrained diag, bias, lower positions, upper positions;
//                         doubles eps                                   lu_linear_forward (inverse: the pass's)
//   2 RQ-spline coupling: tensors identity idx, transform idx, W0, b0, (W1, b1, W2, b2) per block, Wf, bf
//                         (nflows' layout); ints blocks, num_bins; doubles tail_bound, min_bin_width,
//                         min_bin_height, min_derivative, divisor
// Forward returns y, Σ log|det| (N,), then (with ``save``) what backward needs, step by step: an LU step its input
// and the four tensors lu_linear_forward saves; a coupling step its input, its conditioner's input and output, and
// the conditioner's saved activations (2 per block and the last hidden state). Without ``save`` (no gradient to
// come) each step's activations are freed as soon as the next step has run.
#include <ATen/ATen.h>

#include <vector>

#include "ops.h"

namespace mflow {
namespace {

SplineArgs spline_at(const std::vector<int64_t>& ints, size_t ii, const std::vector<double>& doubles, size_t di) {
  return SplineArgs{ints[ii], doubles[di], doubles[di + 1], doubles[di + 2], doubles[di + 3], doubles[di + 4]};
}

std::vector<at::Tensor> net_params(const at::Tensor* t, int64_t blocks) {
  return std::vector<at::Tensor>(t + 2, t + 6 + 4 * blocks);  // W0, b0, ..., Wf, bf
}

}  // namespace

std::vector<FlowPassStep> flow_pass_layout(const std::vector<int64_t>& kinds, const std::vector<int64_t>& ints) {
  std::vector<FlowPassStep> starts;
  FlowPassStep next{0, 0, 0, 0};
  for (const int64_t kind : kinds) {
    TORCH_CHECK(kind >= 0 && kind <= 2, "unknown step kind");
    starts.push_back(next);
    if (kind == 0) {  // idx, its inverse
      next.tensors += 2;
    } else if (kind == 1) {  // 6 tensors, eps; saves its input and lu_linear_forward's 4
      next.tensors += 6;
      next.doubles += 1;
      next.saved += 5;
    } else {  // 6 + 4 per block tensors, (blocks, bins), 5 doubles; saves x, net input, net output, 2 per block + 1
      const int64_t blocks = ints.at(next.ints);
      TORCH_CHECK(blocks >= 0, "malformed program");
      next.tensors += 6 + 4 * static_cast<size_t>(blocks);
      next.saved += 4 + 2 * static_cast<size_t>(blocks);
      next.ints += 2;
      next.doubles += 5;
    }
  }
  starts.push_back(next);
  return starts;
}

std::vector<at::Tensor> flow_pass_forward_cpu(const at::Tensor& x, bool inverse, const std::vector<int64_t>& kinds,
                                              const std::vector<at::Tensor>& tensors, const std::vector<int64_t>& ints,
                                              const std::vector<double>& doubles, bool save) {
  const std::vector<FlowPassStep> layout = flow_pass_layout(kinds, ints);
  at::Tensor s = x.contiguous();
  if (save && s.is_same(x)) s = s.clone();  // autograd refuses to save an input returned as-is
  at::Tensor logdet = at::zeros({x.size(0)}, x.options());
  std::vector<at::Tensor> result{at::Tensor(), logdet};
  for (size_t step = 0; step < kinds.size(); ++step) {
    const FlowPassStep& here = layout[step];
    const at::Tensor* t = tensors.data() + here.tensors;
    if (kinds[step] == 0) {
      s = s.index_select(1, t[0]);
    } else if (kinds[step] == 1) {
      std::vector<at::Tensor> out =
          lu_linear_forward(s, t[0], t[1], t[2], t[3], t[4], t[5], doubles[here.doubles], inverse);
      logdet.add_(out[1]);
      if (save) {
        result.push_back(s);
        result.insert(result.end(), out.begin() + 2, out.end());
      }
      s = out[0];
    } else {
      const int64_t blocks = ints[here.ints];
      const SplineArgs a = spline_at(ints, here.ints + 1, doubles, here.doubles);
      const at::Tensor net_in = s.index_select(1, t[0]);
      std::vector<at::Tensor> net = residual_net_forward(net_in, net_params(t, blocks));
      const at::Tensor cond = net[0].view({s.size(0), t[1].size(0), 3 * a.num_bins - 1});
      at::Tensor out, ld;
      std::tie(out, ld) = rq_forward_cpu(s, cond, t[1], inverse, a);
      logdet.add_(ld);
      if (save) {
        result.push_back(s);
        result.push_back(net_in);
        result.push_back(cond);
        result.insert(result.end(), net.begin() + 1, net.end());
      }
      s = out;
    }
  }
  result[0] = s;
  return result;
}

// Gradients of x and of every program tensor (undefined for the index tensors), from those of y and Σ log|det|.
std::vector<at::Tensor> flow_pass_backward_cpu(const at::Tensor& g_y, const at::Tensor& g_logdet, bool inverse,
                                               const std::vector<int64_t>& kinds,
                                               const std::vector<at::Tensor>& tensors,
                                               const std::vector<int64_t>& ints, const std::vector<double>& doubles,
                                               const std::vector<at::Tensor>& saved) {
  const std::vector<FlowPassStep> layout = flow_pass_layout(kinds, ints);
  std::vector<at::Tensor> grads(tensors.size() + 1);
  at::Tensor g = g_y.contiguous();
  const at::Tensor g_ld = g_logdet.contiguous();
  for (size_t step = kinds.size(); step-- > 0;) {
    const FlowPassStep& here = layout[step];
    const at::Tensor* t = tensors.data() + here.tensors;
    const at::Tensor* sv = saved.data() + here.saved;
    at::Tensor* gt = grads.data() + 1 + here.tensors;
    if (kinds[step] == 0) {
      g = g.index_select(1, t[1]);
    } else if (kinds[step] == 1) {
      const std::vector<at::Tensor> lu_saved(sv + 1, sv + 5);
      std::vector<at::Tensor> lg = lu_linear_backward(g, g_ld, sv[0], t[3], lu_saved, t[2], t[4], t[5], inverse);
      for (size_t j = 0; j < 4; ++j) gt[j] = lg[j + 1];  // lower, upper, unconstrained diag, bias
      g = lg[0];
    } else {
      const int64_t blocks = ints[here.ints];
      const SplineArgs a = spline_at(ints, here.ints + 1, doubles, here.doubles);
      at::Tensor g_x, g_cond;
      std::tie(g_x, g_cond) = rq_backward_cpu(sv[0], sv[2], t[1], g, g_ld, inverse, a);
      const std::vector<at::Tensor> net_saved(sv + 3, sv + 3 + 2 * blocks + 1);
      std::vector<at::Tensor> ng = residual_net_backward(g_cond.view({sv[0].size(0), -1}), sv[1],
                                                         net_params(t, blocks), net_saved, true);
      for (size_t j = 1; j < ng.size(); ++j) gt[1 + j] = ng[j];  // W0, b0, ..., Wf, bf
      g_x.index_add_(1, t[0], ng[0]);
      g = g_x;
    }
  }
  grads[0] = g;
  return grads;
}

}  // namespace mflow
