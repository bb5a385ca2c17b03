// Eigendecompositions of a batch of small symmetric matrices, L at a time, by the cyclic Jacobi method (CPU).
//
// LAPACK (torch.linalg.eigh) decomposes one matrix per call; for the 100 Gram matrices of 8×8 to 20×20 that an
// orthogonal Sylvester flow step factors per training batch (mflow_cli/flows/latent.py, PolarFactor) the calls'
// overhead and scalar code cost 10–60 µs a matrix. Here L matrices share every instruction: element (i, j) of
// the L matrices lies in L consecutive slots, so each loop over the lanes is one vector operation.
//
// One rotation zeroes a_pq (Golub & Van Loan, Matrix Computations, 4th ed., 2013, algs. 8.5.1 and 8.5.3, the
// 2 × 2 symmetric Schur decomposition and cyclic-by-row Jacobi):
//   θ = (a_qq − a_pp) / (2 a_pq),  t = sign(θ) / (|θ| + √(θ² + 1)),  c = 1 / √(t² + 1),  s = t c,
//   a_pp ← a_pp − t a_pq,  a_qq ← a_qq + t a_pq,  a_pq ← 0,
//   a_rp ← c a_rp − s a_rq,  a_rq ← s a_rp + c a_rq  (r ≠ p, q; and symmetrically a_pr, a_qr),
//   V ← V J(p, q, θ) (the same update on V's columns p and q).
// A pair is skipped (its a_pq set to 0) once |a_pq| ≤ eps · max(√|a_pp a_qq|, eps² ‖A‖_F): for a positive
// semi-definite matrix this is the stopping rule of Demmel & Veselić ("Jacobi's method is more accurate than
// QR", 1992), under which Jacobi finds even the small eigenvalues to high relative accuracy. A lane's sweeps end
// when a sweep finds no pair to rotate.
//
// Shapes: a (B, n, n), symmetric (only its values are read; no symmetry check). Returns the eigenvalues (B, n) in
// ascending order and the eigenvectors (B, n, n) as columns, as torch.linalg.eigh does.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace mflow {
namespace {

constexpr int kLanes = 16;  // matrices decomposed together (two AVX-512 registers of float32)
constexpr int kMaxSweeps = 60;  // quadratic convergence needs 5–10 sweeps; this only bounds pathological input

// The decomposition of lanes [b0, b0 + L) of a (n × n each) into w (n each) and v (n × n each). Work arrays are
// lane-innermost: element (i, j) of lane l at (i n + j) L + l.
// The lane loops below are branch-free (selects, no early exits) over distinct rows (__restrict), so that each
// compiles to vector instructions (setup.py builds with -fno-math-errno, so sqrt is an instruction, not a call).
// (Inlined into the per-ISA clones below.)
template <typename T>
inline __attribute__((always_inline)) void rotate_lanes(T* __restrict x, T* __restrict y, T* __restrict x2,
                                                        T* __restrict y2, const T* __restrict c,
                                                        const T* __restrict s) {
  // (x, y) ← (c x − s y, s x + c y), mirrored into (x2, y2) when they are given (the symmetric entries).
#pragma GCC ivdep
  for (int l = 0; l < kLanes; ++l) {
    const T xl = x[l], yl = y[l];
    x[l] = c[l] * xl - s[l] * yl;
    y[l] = s[l] * xl + c[l] * yl;
  }
  if (x2 != nullptr) {
#pragma GCC ivdep
    for (int l = 0; l < kLanes; ++l) {
      x2[l] = x[l];
      y2[l] = y[l];
    }
  }
}

template <typename T>
inline __attribute__((always_inline)) void jacobi_group(const T* a, T* w, T* v, int64_t b0, int64_t lanes,
                                                        int64_t n) {
  constexpr int L = kLanes;
  const T eps = std::numeric_limits<T>::epsilon();
  std::vector<T> A(n * n * L), V(n * n * L, T(0));
  T floor[L], active[L];  // active: 1 while a lane still rotates, else 0
  for (int l = 0; l < L; ++l) {
    // Lanes past the batch's end decompose the identity (no rotations).
    const T* src = a + (b0 + std::min<int64_t>(l, lanes - 1)) * n * n;
    T frob = 0;
    for (int64_t e = 0; e < n * n; ++e) {
      const T x = l < lanes ? src[e] : T(e % (n + 1) == 0);
      A[e * L + l] = x;
      frob += x * x;
    }
    floor[l] = eps * eps * std::sqrt(frob);
    active[l] = T(1);
    for (int64_t i = 0; i < n; ++i) V[(i * n + i) * L + l] = T(1);
  }
  for (int sweep = 0; sweep < kMaxSweeps; ++sweep) {
    T rotated[L] = {};
    for (int64_t p = 0; p + 1 < n; ++p) {
      for (int64_t q = p + 1; q < n; ++q) {
        T* __restrict app = &A[(p * n + p) * L];
        T* __restrict aqq = &A[(q * n + q) * L];
        T* __restrict apq = &A[(p * n + q) * L];
        T* __restrict aqp = &A[(q * n + p) * L];
        T c[L], s[L], t[L], go[L];
#pragma GCC ivdep
        for (int l = 0; l < L; ++l) {
          const T root = std::sqrt(std::abs(app[l] * aqq[l]));
          const T scale = root > floor[l] ? root : floor[l];
          go[l] = (active[l] > T(0)) & (std::abs(apq[l]) > eps * scale) ? T(1) : T(0);
          const T safe = go[l] > T(0) ? apq[l] : T(1);
          const T theta = (aqq[l] - app[l]) / (T(2) * safe);
          const T sign = theta >= T(0) ? T(1) : T(-1);
          t[l] = go[l] * sign / (std::abs(theta) + std::sqrt(theta * theta + T(1)));
          c[l] = T(1) / std::sqrt(t[l] * t[l] + T(1));
          s[l] = t[l] * c[l];
          rotated[l] = go[l] > T(0) ? T(1) : rotated[l];
        }
        int any = 0;
        for (int l = 0; l < L; ++l) any |= go[l] > T(0);
#pragma GCC ivdep
        for (int l = 0; l < L; ++l) {
          const T shift = t[l] * apq[l];
          app[l] -= shift;
          aqq[l] += shift;
          apq[l] = aqp[l] = active[l] > T(0) ? T(0) : apq[l];  // rotated away, or negligible
        }
        if (!any) continue;
        for (int64_t r = 0; r < n; ++r) {
          if (r == p || r == q) continue;
          rotate_lanes(&A[(r * n + p) * L], &A[(r * n + q) * L], &A[(p * n + r) * L], &A[(q * n + r) * L], c, s);
        }
        for (int64_t r = 0; r < n; ++r) {
          rotate_lanes<T>(&V[(r * n + p) * L], &V[(r * n + q) * L], nullptr, nullptr, c, s);
        }
      }
    }
    T remaining = 0;
    for (int l = 0; l < L; ++l) {
      active[l] = std::min(active[l], rotated[l]);
      remaining += active[l];
    }
    if (remaining == T(0)) break;
  }
  // Out, the eigenvalues ascending, each lane's eigenvector columns in the same order.
  std::vector<int64_t> order(n);
  for (int64_t l = 0; l < lanes; ++l) {
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t i, int64_t j) { return A[(i * n + i) * L + l] < A[(j * n + j) * L + l]; });
    T* wl = w + (b0 + l) * n;
    T* vl = v + (b0 + l) * n * n;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t src = order[k];
      wl[k] = A[(src * n + src) * L + l];
      for (int64_t r = 0; r < n; ++r) vl[r * n + k] = V[(r * n + src) * L + l];
    }
  }
}

#define MFLOW_JACOBI_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

MFLOW_JACOBI_CLONES void jacobi_group_of(const float* a, float* w, float* v, int64_t b0, int64_t lanes, int64_t n) {
  jacobi_group(a, w, v, b0, lanes, n);
}

MFLOW_JACOBI_CLONES void jacobi_group_of(const double* a, double* w, double* v, int64_t b0, int64_t lanes,
                                         int64_t n) {
  jacobi_group(a, w, v, b0, lanes, n);
}

}  // namespace

std::vector<at::Tensor> symmetric_eigh_cpu(const at::Tensor& a) {
  const int64_t batch = a.size(0), n = a.size(1);
  at::Tensor w = at::empty({batch, n}, a.options());
  at::Tensor v = at::empty({batch, n, n}, a.options());
  const int64_t groups = (batch + kLanes - 1) / kLanes;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "symmetric_eigh", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    scalar_t* pw = w.data_ptr<scalar_t>();
    scalar_t* pv = v.data_ptr<scalar_t>();
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t b0 = g * kLanes;
        jacobi_group_of(pa, pw, pv, b0, std::min<int64_t>(kLanes, batch - b0), n);
      }
    });
  });
  return {w, v};
}

}  // namespace mflow
