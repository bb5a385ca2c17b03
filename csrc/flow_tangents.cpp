// One pass of a coupling stack with tangents, in one native call (CPU): the decoder Jacobian of the
// manifold flows (mflow_cli/jacobian.py) without a Python call per layer.
//
// The state S is ((k + 1) * B, D): rows [0, B) hold the values, then k blocks of B rows the tangents.
// Every linear map is one matrix product over all rows; its bias is added to the value rows only, and a
// ReLU keeps every row where the value row is positive (the forward-mode rule of relu). A coupling step
// runs its conditioner (an nflows ResidualNet) on the identity features of all rows, then the spline or
// affine kernel of cpu_ops.cpp on the values and on the tangents.
//
// The program, step by step (kinds[i]):
//   0 affine map:        tensors A (D, D), c (D)                       S = S A;  S[:B] += c
//   1 RQ-spline coupling: ints  blocks, num_bins;  doubles tail_bound, min_bin_width, min_bin_height,
//                         min_derivative, divisor
//   2 affine coupling:   ints  blocks
//   couplings take the tensors: identity idx, transform idx, W0ᵀ, b0, (W1ᵀ, b1, W2ᵀ, b2) per block, Wfᵀ, bf
//   (Wfᵀ and bf may be padded with zero columns).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <vector>

#include "ops.h"

namespace mflow {
namespace {

// out = the relu rule of m + bias (bias, when given, added to the value rows only): every row kept where its
// value row is positive. out and m do not overlap. Compiled for AVX-512 / AVX2 / the baseline, picked at load
// time (target_clones), as the rest of this file leaves vectorisation to the compiler.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MFLOW_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MFLOW_CLONES
#endif

template <typename T>
inline __attribute__((always_inline)) void bias_relu_body(const T* __restrict m, const T* __restrict bias,
                                                          T* __restrict out, int64_t rows, int64_t slots,
                                                          int64_t cols) {
  const int64_t stride = rows * cols;
  for (int64_t r = 0; r < rows; ++r) {
    const T* val = m + r * cols;
    T* dst = out + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const T v = val[c] + (bias ? bias[c] : T(0));
      dst[c] = v > T(0) ? v : T(0);
    }
    for (int64_t s = 1; s < slots; ++s) {
      const T* src = val + s * stride;
      T* tdst = dst + s * stride;
      for (int64_t c = 0; c < cols; ++c) tdst[c] = dst[c] > T(0) ? src[c] : T(0);
    }
  }
}

MFLOW_CLONES void bias_relu(const float* m, const float* bias, float* out, int64_t rows, int64_t slots,
                            int64_t cols) {
  bias_relu_body(m, bias, out, rows, slots, cols);
}

MFLOW_CLONES void bias_relu(const double* m, const double* bias, double* out, int64_t rows, int64_t slots,
                            int64_t cols) {
  bias_relu_body(m, bias, out, rows, slots, cols);
}

at::Tensor bias_relu(const at::Tensor& m, const at::Tensor* bias, int64_t rows) {
  at::Tensor out = at::empty_like(m);
  const int64_t slots = m.size(0) / rows, cols = m.size(1);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "bias_relu", [&] {
    bias_relu(m.data_ptr<scalar_t>(), bias ? bias->data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), rows,
              slots, cols);
  });
  return out;
}

void add_bias_(at::Tensor& m, const at::Tensor& bias, int64_t rows) { m.narrow(0, 0, rows).add_(bias); }

// The conditioner of one coupling step on all rows: ((k + 1) B, width). The final layer's weights may carry
// zero columns beyond ``width`` (a product 16 columns wide is about twice as fast as one 14 wide).
at::Tensor residual_net(const at::Tensor& s, int64_t rows, int64_t blocks, const at::Tensor* t, int64_t width) {
  at::Tensor h = at::mm(s.index_select(1, t[0]), t[2]);  // t[0]: identity idx; t[1] (transform idx) unused here
  add_bias_(h, t[3], rows);
  for (int64_t b = 0; b < blocks; ++b) {
    const at::Tensor* w = t + 4 + 4 * b;
    const at::Tensor a = bias_relu(h, nullptr, rows);                    // relu(h)
    const at::Tensor a2 = bias_relu(at::mm(a, w[0]), &w[1], rows);       // relu(a W1ᵀ + b1)
    h.addmm_(a2, w[2]);                                                  // h += a2 W2ᵀ
    add_bias_(h, w[3], rows);
  }
  const at::Tensor* fin = t + 4 + 4 * blocks;
  at::Tensor out = at::mm(h, fin[0]);
  add_bias_(out, fin[1], rows);
  return out.size(1) == width ? out : out.narrow(1, 0, width).contiguous();
}

}  // namespace

at::Tensor flow_tangents_cpu(const at::Tensor& state, int64_t rows, bool inverse, const std::vector<int64_t>& kinds,
                             const std::vector<at::Tensor>& tensors, const std::vector<int64_t>& ints,
                             const std::vector<double>& doubles) {
  at::Tensor s = state.contiguous();
  const int64_t k = s.size(0) / rows - 1;
  size_t ti = 0, ii = 0, di = 0;
  for (const int64_t kind : kinds) {
    if (kind == 0) {
      s = at::mm(s, tensors[ti]);
      add_bias_(s, tensors[ti + 1], rows);
      ti += 2;
      continue;
    }
    const int64_t blocks = ints[ii++];
    const at::Tensor* t = tensors.data() + ti;
    ti += 6 + 4 * blocks;
    const at::Tensor& tidx = t[1];
    const int64_t f = tidx.size(0);
    const at::Tensor cond = residual_net(s, rows, blocks, t, kind == 1 ? f * (3 * ints[ii] - 1) : 2 * f);
    const at::Tensor x = s.narrow(0, 0, rows);
    at::Tensor out, tout;
    if (kind == 1) {
      const SplineArgs a{ints[ii], doubles[di], doubles[di + 1], doubles[di + 2], doubles[di + 3], doubles[di + 4]};
      ii += 1;
      di += 5;
      const int64_t p = 3 * a.num_bins - 1;
      const at::Tensor params = cond.narrow(0, 0, rows).view({rows, f, p});
      out = std::get<0>(rq_forward_cpu(x, params, tidx, inverse, a));
      if (k > 0) {
        const at::Tensor tparams = cond.narrow(0, rows, k * rows).view({k * rows, f, p});
        tout = std::get<0>(rq_jvp_cpu(k == 1 ? x : x.repeat({k, 1}), k == 1 ? params : params.repeat({k, 1, 1}),
                                      tidx, s.narrow(0, rows, k * rows), tparams, inverse, a));
      }
    } else {
      const at::Tensor params = cond.narrow(0, 0, rows);
      out = std::get<0>(affine_forward_cpu(x, params, tidx, inverse));
      if (k > 0) {
        tout = std::get<0>(affine_jvp_cpu(k == 1 ? x : x.repeat({k, 1}), k == 1 ? params : params.repeat({k, 1}),
                                          tidx, s.narrow(0, rows, k * rows), cond.narrow(0, rows, k * rows), inverse));
      }
    }
    s = k > 0 ? at::cat({out, tout}) : out;
  }
  return s;
}

}  // namespace mflow
