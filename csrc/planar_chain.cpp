// K planar steps of a flow-VAE posterior in one native call, forward and backward (CPU).
//
// Rezende & Mohamed (2015), eqs. 10–12 and appendix A.1, as PlanarStep.forward (mflow_cli/flows/latent.py)
// writes them; step k reads (u_k, w_k, b_k) from its parameter vector [u (d), w (d), b]:
//   α = w_kᵀu_k,  β = ‖w_k‖² + 1e−12,  c = softplus(α) − 1 − α,  û_k = u_k + (c / β) w_k   (wᵀû ≥ −1),
//   a_k = w_kᵀ z_{k−1} + b_k,   h_k = tanh(a_k),   z_k = z_{k−1} + û_k h_k,
//   log|det| = Σ_k log(|1 + (1 − h_k²) w_kᵀû_k| + 1e−12).
// As PyTorch ops a step is a dozen small ops and twice as many backward, which is what a K = 80 chain spends
// its time on; here it is a few dozen flops per row and step.
//
// Shapes: z (N, d); params (P, K, 2d + 1); row n uses parameter row n % P (the draws of an importance-weighted
// bound lead, so P = B inputs serve N = S·B rows; P = 1 for a static flow). Forward may save every step's input
// z_{k−1} ((N, K, d)), from which backward recomputes the rest.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace mflow {
namespace {

constexpr double kEps = 1e-12;  // PlanarStep's: in ‖w‖² and inside the log

// Dot products with 8 partial sums, so that the compiler can vectorise them (one sum would be a chain).
template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t d) {
  T part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) {
    for (int j = 0; j < 8; ++j) part[j] += a[i + j] * b[i + j];
  }
  T acc = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; i < d; ++i) acc += a[i] * b[i];
  return acc;
}

template <typename T>
T softplus(T x) {  // torch's F.softplus (beta 1, threshold 20)
  return x > T(20) ? x : std::log1p(std::exp(x));
}

template <typename T>
T softplus_grad(T x) {  // and its derivative as torch's backward computes it
  if (x > T(20)) return T(1);
  const T e = std::exp(x);
  return e / (e + T(1));
}

// û and s = wᵀû of the K steps of parameter vectors ``params`` (K, 2d + 1): (K, d) and (K).
template <typename T>
void invertible_u(const T* params, int64_t K, int64_t d, T* u_hat, T* s) {
  const int64_t stride = 2 * d + 1;
  for (int64_t k = 0; k < K; ++k) {
    const T* u = params + k * stride;
    const T* w = u + d;
    const T alpha = dot(w, u, d), beta = dot(w, w, d) + T(kEps);
    const T c = softplus(alpha) - T(1) - alpha;
    T* uh = u_hat + k * d;
    for (int64_t j = 0; j < d; ++j) uh[j] = u[j] + c / beta * w[j];
    s[k] = dot(w, uh, d);
  }
}

// One row z (d) through the K steps of one parameter row (its û and s precomputed); its log-det.
template <typename T>
T chain_forward(const T* __restrict params, const T* __restrict u_hat, const T* __restrict s, T* __restrict z,
                T* __restrict saved, int64_t K, int64_t d) {
  const int64_t stride = 2 * d + 1;
  T acc = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T* w = params + k * stride + d;
    const T* uh = u_hat + k * d;
    if (saved) std::copy(z, z + d, saved + k * d);
    const T h = std::tanh(dot(w, z, d) + w[d]);
    for (int64_t i = 0; i < d; ++i) z[i] += uh[i] * h;
    acc += std::log(std::abs(T(1) + (T(1) - h * h) * s[k]) + T(kEps));
  }
  return acc;
}

// Gradients of z and of parameter row p from those of the outputs, for the rows n ≡ p (mod P). Per step,
// backwards, with ψ = (1 − h²) s and sign = sign(1 + ψ) (torch's abs: 0 at 0):
//   g_ψ = g_ld sign / (|1 + ψ| + eps),  g_h = ûᵀ g_z − 2 h s g_ψ,  g_a = (1 − h²) g_h,  g_s = (1 − h²) g_ψ,
//   g_z ← g_z + g_a w,   g_w += g_a z_{k−1} + g_s û,   g_û += h g_z + g_s w,   g_b += g_a;
// then û's own chain rule, with γ = wᵀg_û and c' = softplus'(α) − 1:
//   g_u += g_û + (c' γ / β) w,   g_w += (c / β) g_û + (c' γ / β) u − (2 c γ / β²) w.
template <typename T>
void chain_backward(const T* __restrict params, const T* __restrict saved, const T* __restrict g_logdet,
                    T* __restrict g_z, T* __restrict g_params, T* __restrict u_hat, T* __restrict s,
                    T* __restrict g_u_hat, int64_t p, int64_t N, int64_t P, int64_t K, int64_t d) {
  const int64_t stride = 2 * d + 1;
  const T* pp = params + p * K * stride;
  T* gp = g_params + p * K * stride;
  invertible_u(pp, K, d, u_hat, s);
  std::fill(g_u_hat, g_u_hat + K * d, T(0));
  for (int64_t n = p; n < N; n += P) {
    T* g = g_z + n * d;
    for (int64_t k = K; k-- > 0;) {
      const T* w = pp + k * stride + d;
      const T* uh = u_hat + k * d;
      const T* zk = saved + (n * K + k) * d;
      const T h = std::tanh(dot(w, zk, d) + w[d]);
      const T dh = T(1) - h * h;
      const T one_psi = T(1) + dh * s[k];
      const T sign = one_psi > 0 ? T(1) : (one_psi < 0 ? T(-1) : T(0));
      const T g_psi = g_logdet[n] * sign / (std::abs(one_psi) + T(kEps));
      const T g_a = dh * (dot(uh, g, d) - T(2) * h * s[k] * g_psi);
      const T g_s = dh * g_psi;
      T* __restrict gw = gp + k * stride + d;
      T* __restrict gu = g_u_hat + k * d;
      for (int64_t i = 0; i < d; ++i) {
        gw[i] += g_a * zk[i] + g_s * uh[i];
        gu[i] += h * g[i] + g_s * w[i];
        g[i] += g_a * w[i];
      }
      gw[d] += g_a;
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const T* u = pp + k * stride;
    const T* w = u + d;
    const T* gu_hat = g_u_hat + k * d;
    T* __restrict gu = gp + k * stride;
    T* __restrict gw = gu + d;
    const T alpha = dot(w, u, d), beta = dot(w, w, d) + T(kEps);
    const T c = softplus(alpha) - T(1) - alpha, c_prime = softplus_grad(alpha) - T(1);
    const T gamma = dot(w, gu_hat, d);
    for (int64_t i = 0; i < d; ++i) {
      gu[i] = gu_hat[i] + c_prime * gamma / beta * w[i];
      gw[i] += c / beta * gu_hat[i] + c_prime * gamma / beta * u[i] - T(2) * c * gamma / (beta * beta) * w[i];
    }
  }
}

}  // namespace

std::vector<at::Tensor> planar_chain_forward_cpu(const at::Tensor& z, const at::Tensor& params, bool save) {
  const int64_t N = z.size(0), d = z.size(1), P = params.size(0), K = params.size(1);
  at::Tensor out = z.clone();
  at::Tensor logdet = at::empty({N}, z.options());
  at::Tensor saved = save ? at::empty({N, K, d}, z.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "planar_chain_forward", [&] {
    const scalar_t* pp = params.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* lp = logdet.data_ptr<scalar_t>();
    scalar_t* sp = save ? saved.data_ptr<scalar_t>() : nullptr;
    // Every parameter row's û once when rows share them (the draws of a bound); else each row its own, in turn.
    const bool shared = N > P;
    std::vector<scalar_t> table(shared ? P * K * (d + 1) : 0);
    if (shared) {
      for (int64_t p = 0; p < P; ++p) {
        invertible_u(pp + p * K * (2 * d + 1), K, d, &table[p * K * d], &table[P * K * d + p * K]);
      }
    }
    at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, K * d)), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> own(shared ? 0 : K * (d + 1));
      for (int64_t n = begin; n < end; ++n) {
        const int64_t p = n % P;
        const scalar_t* row_params = pp + p * K * (2 * d + 1);
        const scalar_t *u_hat = nullptr, *s = nullptr;
        if (shared) {
          u_hat = &table[p * K * d];
          s = &table[P * K * d + p * K];
        } else {
          invertible_u(row_params, K, d, own.data(), own.data() + K * d);
          u_hat = own.data();
          s = own.data() + K * d;
        }
        lp[n] = chain_forward(row_params, u_hat, s, op + n * d, sp ? sp + n * K * d : nullptr, K, d);
      }
    });
  });
  return save ? std::vector<at::Tensor>{out, logdet, saved} : std::vector<at::Tensor>{out, logdet};
}

std::vector<at::Tensor> planar_chain_backward_cpu(const at::Tensor& g_out, const at::Tensor& g_logdet,
                                                  const at::Tensor& saved, const at::Tensor& params) {
  const int64_t N = g_out.size(0), d = g_out.size(1), P = params.size(0), K = params.size(1);
  at::Tensor g_z = g_out.clone();
  at::Tensor g_params = at::zeros_like(params);
  AT_DISPATCH_FLOATING_TYPES(g_out.scalar_type(), "planar_chain_backward", [&] {
    const scalar_t* pp = params.data_ptr<scalar_t>();
    const scalar_t* zs = saved.data_ptr<scalar_t>();
    const scalar_t* gl = g_logdet.data_ptr<scalar_t>();
    scalar_t* gz = g_z.data_ptr<scalar_t>();
    scalar_t* gp = g_params.data_ptr<scalar_t>();
    at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {  // a parameter row's rows: no shared writes
      std::vector<scalar_t> scratch(K * (2 * d + 1));              // this row's û, s and the gradient of û
      for (int64_t p = begin; p < end; ++p) {
        chain_backward(pp, zs, gl, gz, gp, scratch.data(), scratch.data() + K * d, scratch.data() + K * (d + 1), p,
                       N, P, K, d);
      }
    });
  });
  return {g_z, g_params};
}

}  // namespace mflow
