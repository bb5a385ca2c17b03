// CUDA kernels: one thread per transformed element for the coupling ops (per-element log-dets are
// summed per row afterwards, deterministically), one block per matrix for log det(JᵀJ).
// The element math is shared with the CPU path (elementwise.h).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>

#include "elementwise.h"
#include "ops.h"

namespace mflow {
namespace {

constexpr int kThreads = 128;

inline int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

template <typename T>
__device__ __forceinline__ bool inside_bound(T v, T B) {
  return v >= -B && v <= B;
}

template <typename T>
__global__ void rq_forward_kernel(const T* __restrict__ x, const T* __restrict__ params, const int64_t* __restrict__ tidx,
                                  T* __restrict__ out, T* __restrict__ ld_el, int64_t N, int64_t D, int64_t F,
                                  int64_t P, bool inverse, SplineConfig cfg) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= N * F) return;
  const int64_t n = e / F, f = e % F, j = tidx[f];
  const T v = x[n * D + j];
  if (!inside_bound(v, T(cfg.tail_bound))) {
    ld_el[e] = T(0);
    return;  // out already holds x
  }
  const T* p = params + e * P;
  Knots<T> kn;
  build_knots(p, cfg, kn);
  Local<T> loc;
  int k;
  T o = T(0), l = T(0);
  rq_eval(v, p, kn, cfg, inverse, k, loc, o, l);
  out[n * D + j] = o;
  ld_el[e] = l;
}

template <typename T>
__global__ void rq_backward_kernel(const T* __restrict__ x, const T* __restrict__ params,
                                   const int64_t* __restrict__ tidx, const T* __restrict__ g_out,
                                   const T* __restrict__ g_ld, T* __restrict__ gx, T* __restrict__ gp, int64_t N,
                                   int64_t D, int64_t F, int64_t P, bool inverse, SplineConfig cfg) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= N * F) return;
  const int64_t n = e / F, f = e % F, j = tidx[f];
  const T v = x[n * D + j];
  const T* p = params + e * P;
  T* g = gp + e * P;
  if (!inside_bound(v, T(cfg.tail_bound))) {
    for (int64_t i = 0; i < P; ++i) g[i] = T(0);
    return;  // gx already holds g_out
  }
  Knots<T> kn;
  build_knots(p, cfg, kn);
  Local<T> loc;
  int k;
  T o = T(0), l = T(0);
  rq_eval(v, p, kn, cfg, inverse, k, loc, o, l);
  const Grad7<T> g7 = rq_local_backward(loc, inverse, g_out[n * D + j], g_ld[n]);
  gx[n * D + j] = g7.x;
  knots_backward(p, kn, cfg, k, g7, g);
}

template <typename T>
__global__ void rq_jvp_kernel(const T* __restrict__ x, const T* __restrict__ params, const int64_t* __restrict__ tidx,
                              const T* __restrict__ tx, const T* __restrict__ tparams, T* __restrict__ tout,
                              T* __restrict__ tld_el, int64_t N, int64_t D, int64_t F, int64_t P, bool inverse,
                              SplineConfig cfg) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= N * F) return;
  const int64_t n = e / F, f = e % F, j = tidx[f];
  const T v = x[n * D + j];
  if (!inside_bound(v, T(cfg.tail_bound))) {
    tld_el[e] = T(0);
    return;  // tout already holds tx
  }
  const T* p = params + e * P;
  Knots<T> kn;
  build_knots(p, cfg, kn);
  Local<T> loc;
  int k;
  T o = T(0), l = T(0);
  rq_eval(v, p, kn, cfg, inverse, k, loc, o, l);
  const Grad7<T> tan = knots_jvp(p, tparams + e * P, kn, cfg, k, tx[n * D + j]);
  T t_o, t_l;
  rq_local_jvp(loc, inverse, tan, t_o, t_l);
  tout[n * D + j] = t_o;
  tld_el[e] = t_l;
}

template <typename T>
__global__ void affine_forward_kernel(const T* __restrict__ x, const T* __restrict__ params,
                                      const int64_t* __restrict__ tidx, T* __restrict__ out, T* __restrict__ ld_el,
                                      int64_t N, int64_t D, int64_t F, bool inverse) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= N * F) return;
  const int64_t n = e / F, f = e % F, j = tidx[f];
  T o, l;
  affine_eval(x[n * D + j], params[n * 2 * F + f], params[n * 2 * F + F + f], inverse, o, l);
  out[n * D + j] = o;
  ld_el[e] = l;
}

template <typename T>
__global__ void affine_backward_kernel(const T* __restrict__ x, const T* __restrict__ params,
                                       const int64_t* __restrict__ tidx, const T* __restrict__ g_out,
                                       const T* __restrict__ g_ld, T* __restrict__ gx, T* __restrict__ gp, int64_t N,
                                       int64_t D, int64_t F, bool inverse) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= N * F) return;
  const int64_t n = e / F, f = e % F, j = tidx[f];
  affine_backward(x[n * D + j], params[n * 2 * F + f], params[n * 2 * F + F + f], inverse, g_out[n * D + j], g_ld[n],
                  gx[n * D + j], gp[n * 2 * F + f], gp[n * 2 * F + F + f]);
}

template <typename T>
__global__ void affine_jvp_kernel(const T* __restrict__ x, const T* __restrict__ params,
                                  const int64_t* __restrict__ tidx, const T* __restrict__ tx,
                                  const T* __restrict__ tparams, T* __restrict__ tout, T* __restrict__ tld_el,
                                  int64_t N, int64_t D, int64_t F, bool inverse) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= N * F) return;
  const int64_t n = e / F, f = e % F, j = tidx[f];
  T t_o, t_l;
  affine_jvp(x[n * D + j], params[n * 2 * F + f], params[n * 2 * F + F + f], inverse, tx[n * D + j],
             tparams[n * 2 * F + f], tparams[n * 2 * F + F + f], t_o, t_l);
  tout[n * D + j] = t_o;
  tld_el[e] = t_l;
}

// One block per matrix: lower triangle of G = JᵀJ, then a left-looking Cholesky column by column.
template <typename T>
__global__ void logdet_gram_forward_kernel(const T* __restrict__ jac, T* __restrict__ chol, T* __restrict__ logdet,
                                           int* __restrict__ info, int64_t D, int64_t d) {
  const int64_t b = blockIdx.x;
  const T* J = jac + b * D * d;
  T* L = chol + b * d * d;
  for (int64_t ij = threadIdx.x; ij < d * d; ij += blockDim.x) {
    const int64_t i = ij / d, j = ij % d;
    T s = T(0);
    if (j <= i)
      for (int64_t r = 0; r < D; ++r) s += J[r * d + i] * J[r * d + j];
    L[ij] = s;
  }
  __shared__ int failed;
  if (threadIdx.x == 0) failed = 0;
  __syncthreads();
  for (int64_t j = 0; j < d; ++j) {
    if (threadIdx.x == 0) {
      T s = L[j * d + j];
      for (int64_t k = 0; k < j; ++k) s -= L[j * d + k] * L[j * d + k];
      if (!(s > T(0))) failed = 1;
      L[j * d + j] = sqrt(s);
    }
    __syncthreads();
    if (failed) break;
    const T djj = L[j * d + j];
    for (int64_t i = j + 1 + threadIdx.x; i < d; i += blockDim.x) {
      T s = L[i * d + j];
      for (int64_t k = 0; k < j; ++k) s -= L[i * d + k] * L[j * d + k];
      L[i * d + j] = s / djj;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    info[b] = failed;
    T acc = T(0);
    for (int64_t j = 0; j < d; ++j) acc += log(L[j * d + j]);
    logdet[b] = failed ? T(NAN) : T(2) * acc;
  }
}

// One thread per row r of each J: solve L Lᵀ z = J_r in place in the output, scale by 2 g_b.
template <typename T>
__global__ void logdet_gram_backward_kernel(const T* __restrict__ jac, const T* __restrict__ chol,
                                            const T* __restrict__ g, T* __restrict__ gj, int64_t B, int64_t D,
                                            int64_t d) {
  const int64_t br = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (br >= B * D) return;
  const int64_t b = br / D;
  const T* L = chol + b * d * d;
  const T* row = jac + br * d;
  T* z = gj + br * d;
  for (int64_t i = 0; i < d; ++i) {
    T s = row[i];
    for (int64_t k = 0; k < i; ++k) s -= L[i * d + k] * z[k];
    z[i] = s / L[i * d + i];
  }
  for (int64_t i = d - 1; i >= 0; --i) {
    T s = z[i];
    for (int64_t k = i + 1; k < d; ++k) s -= L[k * d + i] * z[k];
    z[i] = s / L[i * d + i];
  }
  const T scale = T(2) * g[b];
  for (int64_t i = 0; i < d; ++i) z[i] *= scale;
}

}  // namespace

#define MFLOW_LAUNCH(n) blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()

std::tuple<at::Tensor, at::Tensor> rq_forward_cuda(const at::Tensor& x, const at::Tensor& params,
                                                   const at::Tensor& tidx, bool inverse, const SplineArgs& a) {
  const c10::cuda::CUDAGuard guard(x.device());
  const SplineConfig cfg = make_config(a);
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0), P = params.size(2);
  auto out = x.clone();
  auto ld_el = at::empty({N, F}, x.options());
  if (N * F > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_forward_cuda", [&] {
      rq_forward_kernel<scalar_t><<<MFLOW_LAUNCH(N * F)>>>(x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(),
                                                          tidx.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                                                          ld_el.data_ptr<scalar_t>(), N, D, F, P, inverse, cfg);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, ld_el.sum(1)};
}

std::tuple<at::Tensor, at::Tensor> rq_backward_cuda(const at::Tensor& x, const at::Tensor& params,
                                                    const at::Tensor& tidx, const at::Tensor& g_out,
                                                    const at::Tensor& g_ld, bool inverse, const SplineArgs& a) {
  const c10::cuda::CUDAGuard guard(x.device());
  const SplineConfig cfg = make_config(a);
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0), P = params.size(2);
  auto gx = g_out.clone();
  auto gp = at::empty_like(params);
  if (N * F > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_backward_cuda", [&] {
      rq_backward_kernel<scalar_t><<<MFLOW_LAUNCH(N * F)>>>(
          x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(), tidx.data_ptr<int64_t>(), g_out.data_ptr<scalar_t>(),
          g_ld.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), gp.data_ptr<scalar_t>(), N, D, F, P, inverse, cfg);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gx, gp};
}

std::tuple<at::Tensor, at::Tensor> rq_jvp_cuda(const at::Tensor& x, const at::Tensor& params, const at::Tensor& tidx,
                                               const at::Tensor& tx, const at::Tensor& tparams, bool inverse,
                                               const SplineArgs& a) {
  const c10::cuda::CUDAGuard guard(x.device());
  const SplineConfig cfg = make_config(a);
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0), P = params.size(2);
  auto tout = tx.clone();
  auto tld_el = at::empty({N, F}, x.options());
  if (N * F > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_jvp_cuda", [&] {
      rq_jvp_kernel<scalar_t><<<MFLOW_LAUNCH(N * F)>>>(
          x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(), tidx.data_ptr<int64_t>(), tx.data_ptr<scalar_t>(),
          tparams.data_ptr<scalar_t>(), tout.data_ptr<scalar_t>(), tld_el.data_ptr<scalar_t>(), N, D, F, P, inverse,
          cfg);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {tout, tld_el.sum(1)};
}

std::tuple<at::Tensor, at::Tensor> affine_forward_cuda(const at::Tensor& x, const at::Tensor& params,
                                                       const at::Tensor& tidx, bool inverse) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0);
  auto out = x.clone();
  auto ld_el = at::empty({N, F}, x.options());
  if (N * F > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_forward_cuda", [&] {
      affine_forward_kernel<scalar_t><<<MFLOW_LAUNCH(N * F)>>>(x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(),
                                                              tidx.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                                                              ld_el.data_ptr<scalar_t>(), N, D, F, inverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, ld_el.sum(1)};
}

std::tuple<at::Tensor, at::Tensor> affine_backward_cuda(const at::Tensor& x, const at::Tensor& params,
                                                        const at::Tensor& tidx, const at::Tensor& g_out,
                                                        const at::Tensor& g_ld, bool inverse) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0);
  auto gx = g_out.clone();
  auto gp = at::empty_like(params);
  if (N * F > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_backward_cuda", [&] {
      affine_backward_kernel<scalar_t><<<MFLOW_LAUNCH(N * F)>>>(
          x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(), tidx.data_ptr<int64_t>(), g_out.data_ptr<scalar_t>(),
          g_ld.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), gp.data_ptr<scalar_t>(), N, D, F, inverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gx, gp};
}

std::tuple<at::Tensor, at::Tensor> affine_jvp_cuda(const at::Tensor& x, const at::Tensor& params,
                                                   const at::Tensor& tidx, const at::Tensor& tx,
                                                   const at::Tensor& tparams, bool inverse) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0);
  auto tout = tx.clone();
  auto tld_el = at::empty({N, F}, x.options());
  if (N * F > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_jvp_cuda", [&] {
      affine_jvp_kernel<scalar_t><<<MFLOW_LAUNCH(N * F)>>>(
          x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(), tidx.data_ptr<int64_t>(), tx.data_ptr<scalar_t>(),
          tparams.data_ptr<scalar_t>(), tout.data_ptr<scalar_t>(), tld_el.data_ptr<scalar_t>(), N, D, F, inverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {tout, tld_el.sum(1)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> logdet_gram_forward_cuda(const at::Tensor& jac) {
  const c10::cuda::CUDAGuard guard(jac.device());
  const int64_t B = jac.size(0), D = jac.size(1), d = jac.size(2);
  auto chol = at::empty({B, d, d}, jac.options());
  auto logdet = at::empty({B}, jac.options());
  auto info = at::empty({B}, jac.options().dtype(at::kInt));
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES(jac.scalar_type(), "logdet_gram_forward_cuda", [&] {
      logdet_gram_forward_kernel<scalar_t><<<static_cast<int>(B), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          jac.data_ptr<scalar_t>(), chol.data_ptr<scalar_t>(), logdet.data_ptr<scalar_t>(), info.data_ptr<int>(), D,
          d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {logdet, chol, info};
}

at::Tensor logdet_gram_backward_cuda(const at::Tensor& jac, const at::Tensor& chol, const at::Tensor& g) {
  const c10::cuda::CUDAGuard guard(jac.device());
  const int64_t B = jac.size(0), D = jac.size(1), d = jac.size(2);
  auto gj = at::empty_like(jac);
  if (B * D > 0) {
    AT_DISPATCH_FLOATING_TYPES(jac.scalar_type(), "logdet_gram_backward_cuda", [&] {
      logdet_gram_backward_kernel<scalar_t><<<MFLOW_LAUNCH(B * D)>>>(
          jac.data_ptr<scalar_t>(), chol.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), gj.data_ptr<scalar_t>(), B, D,
          d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return gj;
}

}  // namespace mflow
