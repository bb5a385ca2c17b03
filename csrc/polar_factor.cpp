// The orthonormal polar factor U = Q (QᵀQ)^{-1/2} of a batch of tall matrices Q (B, d, M), M ≤ d, and its
// gradient, each in one native call (CPU).
//
// mflow_cli/flows/latent.py's PolarFactor derives both and runs them as about a dozen batched PyTorch matmuls of
// (B, d, M) by (B, M, M) each: at a training batch's sizes (B = 100, d = 40, M = 8–20) every one of them costs a
// call's overhead and runs at ~12 GFLOP/s, and together they took 93% of the polar factor's forward and backward
// at M = 8. Here each matrix's whole chain runs in one pass over its own few kilobytes (at::parallel_for over the
// batch), and the eigendecomposition of QᵀQ is the batched Jacobi kernel of symmetric_eigh.cpp.
//
// Forward, per matrix (PolarFactor's docstring says why):
//   QᵀQ = V Λ Vᵀ,  s = √max(Λ, eps · max Λ),  P⁻¹ = V diag(1/s) Vᵀ,  U = Q P⁻¹,
//   then Björck–Bowie U ← U + ½ U (I − UᵀU) until max|I − UᵀU| < 100 eps (at most kMaxRefinements passes).
// The Python path stops refining once the whole batch meets the tolerance; here each matrix stops on its own.
// Backward, per matrix, for the output gradient G:
//   Ŷ = (Vᵀ UᵀG V) ⊘ (s_i + s_j),  Y = V Ŷ Vᵀ,  ∂L/∂Q = (G − U UᵀG) P⁻¹ + U (Y − Yᵀ).
//
// Shapes: q and the gradient (B, d, M), contiguous. The forward returns U (B, d, M), V (B, M, M), s (B, M) and
// P⁻¹ (B, M, M), the four tensors the backward reads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops.h"

namespace mflow {
namespace {

constexpr int kMaxRefinements = 8;  // PolarFactor.MAX_REFINEMENTS

// Every matrix below is stored row-major with its columns padded with zeros to a multiple of kWidth<T> (one 256-bit
// vector), so that a row of any operand is a whole number of vectors.
template <typename T>
constexpr int64_t kWidth = 32 / sizeof(T);

inline int64_t padded(int64_t columns, int64_t width) { return (columns + width - 1) / width * width; }

// Rows [i0, i0 + R) by columns [j0, j0 + NV · kWidth<T>) of c = alpha · A B + beta · c (see small_gemm), the R × NV
// vectors of the block held in registers over the whole sum on p: R · NV independent chains of multiply-adds and
// one vector load of B per NV of them, rather than a load and a store of c per p. Rows past m repeat the last row
// (computed, not stored).
template <typename T, int NV, int R>
inline __attribute__((always_inline)) void gemm_block(int64_t i0, int64_t j0, int64_t m, int64_t k, T alpha,
                                                      const T* __restrict a, int64_t a_row, int64_t a_col,
                                                      const T* __restrict b, T beta, T* __restrict c, int64_t ld) {
  typedef T Vec __attribute__((vector_size(32)));  // kWidth<T> lanes; unaligned loads and stores by memcpy
  const T* arow[R];
  for (int r = 0; r < R; ++r) arow[r] = a + std::min(i0 + r, m - 1) * a_row;
  Vec acc[R][NV] = {};
  for (int64_t p = 0; p < k; ++p) {
    Vec bv[NV];
    for (int v = 0; v < NV; ++v) __builtin_memcpy(&bv[v], b + p * ld + j0 + v * kWidth<T>, sizeof(Vec));
    for (int r = 0; r < R; ++r) {
      const T x = arow[r][p * a_col];
      for (int v = 0; v < NV; ++v) acc[r][v] += x * bv[v];
    }
  }
  for (int r = 0; r < R && i0 + r < m; ++r) {
    for (int v = 0; v < NV; ++v) {
      T* cr = c + (i0 + r) * ld + j0 + v * kWidth<T>;
      Vec old = {};
      if (beta != T(0)) __builtin_memcpy(&old, cr, sizeof(Vec));
      const Vec out = alpha * acc[r][v] + beta * old;
      __builtin_memcpy(cr, &out, sizeof(Vec));
    }
  }
}

// c (m × n) = alpha · A B + beta · c, with A(i, p) = a[i · a_row + p · a_col] (so Aᵀ is a swap of the two strides),
// B (k × n) and c (m × n) of row stride ld, n ≤ ld a multiple of kWidth<T>: blocks of 6 rows by two vectors, then
// 8 rows by one for what is left of the columns (15 and 10 vector registers of AVX2's 16).
template <typename T>
inline __attribute__((always_inline)) void small_gemm(int64_t m, int64_t n, int64_t k, T alpha, const T* __restrict a,
                                                      int64_t a_row, int64_t a_col, const T* __restrict b, T beta,
                                                      T* __restrict c, int64_t ld) {
  constexpr int64_t W = kWidth<T>;
  int64_t j0 = 0;
  for (; j0 + 2 * W <= n; j0 += 2 * W)
    for (int64_t i0 = 0; i0 < m; i0 += 6) gemm_block<T, 2, 6>(i0, j0, m, k, alpha, a, a_row, a_col, b, beta, c, ld);
  for (; j0 < n; j0 += W)
    for (int64_t i0 = 0; i0 < m; i0 += 8) gemm_block<T, 1, 8>(i0, j0, m, k, alpha, a, a_row, a_col, b, beta, c, ld);
}

// Copies between the compact (rows × m) tensors and the padded work arrays.
template <typename T>
inline void pad_rows(const T* src, T* dst, int64_t rows, int64_t m, int64_t ld) {
  for (int64_t i = 0; i < rows; ++i) {
    std::copy(src + i * m, src + (i + 1) * m, dst + i * ld);
    std::fill(dst + i * ld + m, dst + (i + 1) * ld, T(0));
  }
}

template <typename T>
inline void unpad_rows(const T* src, T* dst, int64_t rows, int64_t m, int64_t ld) {
  for (int64_t i = 0; i < rows; ++i) std::copy(src + i * ld, src + i * ld + m, dst + i * m);
}

// Work arrays of one thread, padded: M × M matrices (mm0..mm4) and d × M ones (dm0..dm3).
template <typename T>
struct Scratch {
  int64_t ld;
  std::vector<T> mm0, mm1, mm2, mm3, mm4, dm0, dm1, dm2, dm3;
  Scratch(int64_t d, int64_t m)
      : ld(padded(m, kWidth<T>)), mm0(m * ld), mm1(m * ld), mm2(m * ld), mm3(m * ld), mm4(m * ld), dm0(d * ld),
        dm1(d * ld), dm2(d * ld), dm3(d * ld) {}
};

// QᵀQ of one compact Q (d × M) into the compact gram (M × M).
template <typename T>
inline __attribute__((always_inline)) void gram_one(const T* q, T* gram, int64_t d, int64_t m, Scratch<T>& tmp) {
  const int64_t ld = tmp.ld;
  pad_rows(q, tmp.dm0.data(), d, m, ld);
  small_gemm<T>(m, ld, d, T(1), tmp.dm0.data(), 1, ld, tmp.dm0.data(), T(0), tmp.mm0.data(), ld);
  unpad_rows(tmp.mm0.data(), gram, m, m, ld);
}

// Given Q (d × M) and its Gram matrix's eigenvalues w and eigenvectors v (columns), write s, P⁻¹ and U (compact).
template <typename T>
inline __attribute__((always_inline)) void polar_forward_one(const T* q, const T* w, const T* v, T* s, T* p_inverse,
                                                             T* u, int64_t d, int64_t m, Scratch<T>& tmp) {
  const int64_t ld = tmp.ld;
  const T eps = std::numeric_limits<T>::epsilon();
  const T floor = std::max(w[m - 1], std::numeric_limits<T>::min()) * eps;
  for (int64_t j = 0; j < m; ++j) s[j] = std::sqrt(std::max(w[j], floor));
  T* scaled = tmp.mm0.data();  // V diag(1/s)
  T* vt = tmp.mm1.data();
  T* pinv = tmp.mm2.data();
  T* residual = tmp.mm3.data();
  T* qp = tmp.dm0.data();
  T* up = tmp.dm1.data();
  T* next = tmp.dm2.data();
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < ld; ++j) {
      scaled[i * ld + j] = j < m ? v[i * m + j] / s[j] : T(0);
      vt[i * ld + j] = j < m ? v[j * m + i] : T(0);
    }
  }
  small_gemm<T>(m, ld, m, T(1), scaled, ld, 1, vt, T(0), pinv, ld);
  pad_rows(q, qp, d, m, ld);
  small_gemm<T>(d, ld, m, T(1), qp, ld, 1, pinv, T(0), up, ld);
  const T tolerance = T(100) * eps;
  for (int pass = 0; pass < kMaxRefinements; ++pass) {
    small_gemm<T>(m, ld, d, T(-1), up, 1, ld, up, T(0), residual, ld);  // −UᵀU, then + I
    T largest = 0;
    for (int64_t i = 0; i < m; ++i) {
      residual[i * ld + i] += T(1);
      for (int64_t j = 0; j < m; ++j) largest = std::max(largest, std::abs(residual[i * ld + j]));
    }
    if (largest < tolerance) break;
    std::copy(up, up + d * ld, next);
    small_gemm<T>(d, ld, m, T(0.5), up, ld, 1, residual, T(1), next, ld);
    std::swap(up, next);
  }
  unpad_rows(pinv, p_inverse, m, m, ld);
  unpad_rows(up, u, d, m, ld);
}

template <typename T>
inline __attribute__((always_inline)) void polar_backward_one(const T* g, const T* u, const T* v, const T* s,
                                                              const T* p_inverse, T* grad, int64_t d, int64_t m,
                                                              Scratch<T>& tmp) {
  const int64_t ld = tmp.ld;
  T *vp = tmp.mm0.data(), *vt = tmp.mm1.data(), *pinv = tmp.mm2.data(), *ut_g = tmp.mm3.data(), *x = tmp.mm4.data();
  T *gp = tmp.dm0.data(), *up = tmp.dm1.data(), *out = tmp.dm2.data();
  pad_rows(v, vp, m, m, ld);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < ld; ++j) vt[i * ld + j] = j < m ? v[j * m + i] : T(0);
  pad_rows(p_inverse, pinv, m, m, ld);
  pad_rows(g, gp, d, m, ld);
  pad_rows(u, up, d, m, ld);
  small_gemm<T>(m, ld, d, T(1), up, 1, ld, gp, T(0), ut_g, ld);  // UᵀG
  small_gemm<T>(m, ld, m, T(1), vp, 1, ld, ut_g, T(0), x, ld);   // Vᵀ UᵀG
  T* y_hat = tmp.dm3.data();  // (d ≥ M rows: room for an M × M matrix)
  small_gemm<T>(m, ld, m, T(1), x, ld, 1, vp, T(0), y_hat, ld);  // Vᵀ UᵀG V
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j) y_hat[i * ld + j] /= s[i] + s[j];  // Ŷ
  small_gemm<T>(m, ld, m, T(1), vp, ld, 1, y_hat, T(0), x, ld);  // V Ŷ
  small_gemm<T>(m, ld, m, T(1), x, ld, 1, vt, T(0), y_hat, ld);  // Y = V Ŷ Vᵀ
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j) x[i * ld + j] = y_hat[i * ld + j] - y_hat[j * ld + i];  // Y − Yᵀ
  small_gemm<T>(d, ld, m, T(-1), up, ld, 1, ut_g, T(1), gp, ld);  // G − U UᵀG
  small_gemm<T>(d, ld, m, T(1), gp, ld, 1, pinv, T(0), out, ld);
  small_gemm<T>(d, ld, m, T(1), up, ld, 1, x, T(1), out, ld);
  unpad_rows(out, grad, d, m, ld);
}

#define MFLOW_POLAR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

MFLOW_POLAR_CLONES void gram_of(const float* q, float* gram, int64_t d, int64_t m, Scratch<float>& tmp) {
  gram_one(q, gram, d, m, tmp);
}
MFLOW_POLAR_CLONES void gram_of(const double* q, double* gram, int64_t d, int64_t m, Scratch<double>& tmp) {
  gram_one(q, gram, d, m, tmp);
}
MFLOW_POLAR_CLONES void forward_of(const float* q, const float* w, const float* v, float* s, float* p, float* u,
                                   int64_t d, int64_t m, Scratch<float>& tmp) {
  polar_forward_one(q, w, v, s, p, u, d, m, tmp);
}
MFLOW_POLAR_CLONES void forward_of(const double* q, const double* w, const double* v, double* s, double* p, double* u,
                                   int64_t d, int64_t m, Scratch<double>& tmp) {
  polar_forward_one(q, w, v, s, p, u, d, m, tmp);
}
MFLOW_POLAR_CLONES void backward_of(const float* g, const float* u, const float* v, const float* s, const float* p,
                                    float* grad, int64_t d, int64_t m, Scratch<float>& tmp) {
  polar_backward_one(g, u, v, s, p, grad, d, m, tmp);
}
MFLOW_POLAR_CLONES void backward_of(const double* g, const double* u, const double* v, const double* s,
                                    const double* p, double* grad, int64_t d, int64_t m, Scratch<double>& tmp) {
  polar_backward_one(g, u, v, s, p, grad, d, m, tmp);
}

// Matrices per parallel_for task: enough work (~10 µs) per task to cover its scheduling.
constexpr int64_t kGrain = 8;

}  // namespace

std::vector<at::Tensor> polar_factor_forward_cpu(const at::Tensor& q) {
  const int64_t batch = q.size(0), d = q.size(1), m = q.size(2);
  at::Tensor gram = at::empty({batch, m, m}, q.options());
  at::Tensor s = at::empty({batch, m}, q.options());
  at::Tensor p_inverse = at::empty({batch, m, m}, q.options());
  at::Tensor u = at::empty({batch, d, m}, q.options());
  std::vector<at::Tensor> eigh;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "polar_factor_forward", [&] {
    const scalar_t* pq = q.data_ptr<scalar_t>();
    scalar_t* pg = gram.data_ptr<scalar_t>();
    at::parallel_for(0, batch, kGrain, [&](int64_t b0, int64_t b1) {
      Scratch<scalar_t> tmp(d, m);
      for (int64_t b = b0; b < b1; ++b) gram_of(pq + b * d * m, pg + b * m * m, d, m, tmp);
    });
    eigh = symmetric_eigh_cpu(gram);
    const scalar_t* pw = eigh[0].data_ptr<scalar_t>();
    const scalar_t* pv = eigh[1].data_ptr<scalar_t>();
    scalar_t* ps = s.data_ptr<scalar_t>();
    scalar_t* pp = p_inverse.data_ptr<scalar_t>();
    scalar_t* pu = u.data_ptr<scalar_t>();
    at::parallel_for(0, batch, kGrain, [&](int64_t b0, int64_t b1) {
      Scratch<scalar_t> tmp(d, m);
      for (int64_t b = b0; b < b1; ++b)
        forward_of(pq + b * d * m, pw + b * m, pv + b * m * m, ps + b * m, pp + b * m * m, pu + b * d * m, d, m, tmp);
    });
  });
  return {u, eigh[1], s, p_inverse};
}

at::Tensor polar_factor_backward_cpu(const at::Tensor& grad_u, const at::Tensor& u, const at::Tensor& basis,
                                     const at::Tensor& roots, const at::Tensor& p_inverse) {
  const int64_t batch = u.size(0), d = u.size(1), m = u.size(2);
  at::Tensor grad_q = at::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "polar_factor_backward", [&] {
    const scalar_t* pg = grad_u.data_ptr<scalar_t>();
    const scalar_t* pu = u.data_ptr<scalar_t>();
    const scalar_t* pv = basis.data_ptr<scalar_t>();
    const scalar_t* ps = roots.data_ptr<scalar_t>();
    const scalar_t* pp = p_inverse.data_ptr<scalar_t>();
    scalar_t* out = grad_q.data_ptr<scalar_t>();
    at::parallel_for(0, batch, kGrain, [&](int64_t b0, int64_t b1) {
      Scratch<scalar_t> tmp(d, m);
      for (int64_t b = b0; b < b1; ++b)
        backward_of(pg + b * d * m, pu + b * d * m, pv + b * m * m, ps + b * m, pp + b * m * m, out + b * d * m, d,
                    m, tmp);
    });
  });
  return grad_q;
}

}  // namespace mflow
