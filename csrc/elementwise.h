// Element-wise math shared by the CPU (.cpp) and CUDA (.cu) kernels.
//
// Everything here works on ONE transformed feature of ONE row and is written to reproduce
// nflows' pure-PyTorch code operation by operation (nflows/transforms/splines/rational_quadratic.py,
// nflows/transforms/coupling.py), so that the fused path and the reference agree to rounding.
//
// Rational-quadratic spline (Durkan et al. 2019, "Neural Spline Flows", eqs. 4-6), linear tails:
//   inside [-B, B], bin k with knots (c_k, h_k), width W, height H, slope s = H/W, derivatives d0, d1:
//     theta = (x - c_k)/W,  t = theta (1 - theta)
//     y     = h_k + H (s theta^2 + d0 t) / (s + (d0 + d1 - 2 s) t)
//     dy/dx = s^2 (d1 theta^2 + 2 s t + d0 (1 - theta)^2) / (s + (d0 + d1 - 2 s) t)^2
//   outside: identity, log-det 0.
// Gradients (backward and forward mode) go through the 7 "local" variables
// (x, c_k, W, h_k, H, d0, d1) and from there through cumsum/softmax/softplus to the raw network outputs.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define MFLOW_HD __host__ __device__ __forceinline__
#else
#define MFLOW_HD inline
#endif

namespace mflow {

#if !defined(__CUDACC__)
// float overloads on the host (unqualified calls would otherwise pick ::exp(double) for floats)
using std::exp;
using std::fmax;
using std::log;
using std::log1p;
using std::sqrt;
#endif

constexpr int kMaxBins = 64;

template <typename T>
MFLOW_HD T softplus(T x) {  // torch.nn.functional.softplus, beta=1, threshold=20
  return x > T(20) ? x : log1p(exp(x));
}

template <typename T>
MFLOW_HD T softplus_grad(T x) {
  if (x > T(20)) return T(1);
  T z = exp(x);
  return z / (z + T(1));
}

struct SplineConfig {
  int num_bins;
  double tail_bound, min_bin_width, min_bin_height, min_derivative, divisor;
  double boundary_derivative;  // min_derivative + softplus(log(exp(1 - min_derivative) - 1)), i.e. ~1
};

// Knots of one element's spline, built from its raw parameters p[0 .. 3K-2]
// (K widths, K heights, K-1 interior derivatives), exactly as nflows builds them.
template <typename T>
struct Knots {
  T pw[kMaxBins], ph[kMaxBins];            // softmax probabilities
  T cw[kMaxBins + 1], ch[kMaxBins + 1];    // knot positions (cumwidths / cumheights)
};

template <typename T>
MFLOW_HD void softmax_scaled(const T* u, int K, T divisor, T* p) {
  for (int i = 0; i < K; ++i) p[i] = u[i] / divisor;
  T m = p[0];
  for (int i = 1; i < K; ++i) m = fmax(m, p[i]);
  T s = T(0);
  for (int i = 0; i < K; ++i) {
    p[i] = exp(p[i] - m);
    s += p[i];
  }
  for (int i = 0; i < K; ++i) p[i] = p[i] / s;
}

template <typename T>
MFLOW_HD void cumulate(const T* p, int K, T min_bin, T lo, T hi, T* c) {
  // c_0 = lo, c_j = (hi - lo) * sum_{i<j} (min + (1 - min K) p_i) + lo, c_K = hi
  T acc = T(0);
  c[0] = lo;
  for (int j = 1; j < K; ++j) {
    acc += min_bin + (T(1) - min_bin * K) * p[j - 1];
    c[j] = (hi - lo) * acc + lo;
  }
  c[K] = hi;
}

template <typename T>
MFLOW_HD void build_knots(const T* p, const SplineConfig& cfg, Knots<T>& kn) {
  const int K = cfg.num_bins;
  const T B = T(cfg.tail_bound);
  softmax_scaled(p, K, T(cfg.divisor), kn.pw);
  softmax_scaled(p + K, K, T(cfg.divisor), kn.ph);
  cumulate(kn.pw, K, T(cfg.min_bin_width), -B, B, kn.cw);
  cumulate(kn.ph, K, T(cfg.min_bin_height), -B, B, kn.ch);
}

// Derivative at knot j: fixed at the two ends (linear tails), min + softplus(raw) inside.
// Only the two knots of the selected bin are ever needed, so only those two softplus are computed.
template <typename T>
MFLOW_HD T knot_derivative(const T* p, const SplineConfig& cfg, int j) {
  const int K = cfg.num_bins;
  if (j == 0 || j == K) return T(cfg.boundary_derivative);
  return T(cfg.min_derivative) + softplus(p[2 * K + j - 1]);
}

// nflows' searchsorted: (number of knots <= v, last knot raised by 1e-6) - 1.
template <typename T>
MFLOW_HD int find_bin(const T* knots, int K, T v) {
  int count = 0;
  for (int j = 0; j < K; ++j) count += (v >= knots[j]);
  count += (v >= knots[K] + T(1e-6));
  return count - 1;
}

// The local variables of one evaluation: bin knots and the position theta inside the bin.
template <typename T>
struct Local {
  T c, W, h, H, d0, d1, theta;
};

// Partial derivatives of y (or of log dy/dx) w.r.t. (x, c, W, h, H, d0, d1), weighted by gy and gl.
template <typename T>
struct Grad7 {
  T x, c, W, h, H, d0, d1;
};

template <typename T>
MFLOW_HD Grad7<T> local_vjp(const Local<T>& v, T gy, T gl) {
  const T s = v.H / v.W, th = v.theta, t = th * (T(1) - th), a = v.d0 + v.d1 - T(2) * s;
  const T num = v.H * (s * th * th + v.d0 * t);
  const T den = s + a * t;
  const T dnum = s * s * (v.d1 * th * th + T(2) * s * t + v.d0 * (T(1) - th) * (T(1) - th));
  const T g_num = gy / den;
  const T g_den = -gy * num / (den * den) - T(2) * gl / den;
  const T g_dnum = gl / dnum;
  const T g_s = g_num * v.H * th * th + g_den * (T(1) - T(2) * t) + g_dnum * (T(2) * dnum / s + T(2) * s * s * t);
  const T g_th = g_num * v.H * (T(2) * s * th + v.d0 * (T(1) - T(2) * th)) + g_den * a * (T(1) - T(2) * th) +
                 g_dnum * T(2) * s * s * (v.d1 * th + s * (T(1) - T(2) * th) - v.d0 * (T(1) - th));
  Grad7<T> g;
  g.d0 = g_num * v.H * t + g_den * t + g_dnum * s * s * (T(1) - th) * (T(1) - th);
  g.d1 = g_den * t + g_dnum * s * s * th * th;
  g.H = g_num * (s * th * th + v.d0 * t) + g_s / v.W;
  g.W = -g_s * s / v.W - g_th * th / v.W;
  g.x = g_th / v.W;
  g.c = -g_th / v.W;
  g.h = gy;
  return g;
}

template <typename T>
MFLOW_HD T dot7(const Grad7<T>& a, const Grad7<T>& b) {
  return a.x * b.x + a.c * b.c + a.W * b.W + a.h * b.h + a.H * b.H + a.d0 * b.d0 + a.d1 * b.d1;
}

// Evaluate one element. Returns false (identity) outside the tail bound.
// Fills `loc` (with theta) and writes the output and the per-element log|dy/dx| of the direction asked.
template <typename T>
MFLOW_HD bool rq_eval(T xin, const T* p, const Knots<T>& kn, const SplineConfig& cfg, bool inverse, int& k,
                      Local<T>& loc, T& out, T& ld) {
  const T B = T(cfg.tail_bound);
  const int K = cfg.num_bins;
  if (!(xin >= -B && xin <= B)) {
    out = xin;
    ld = T(0);
    return false;
  }
  k = inverse ? find_bin(kn.ch, K, xin) : find_bin(kn.cw, K, xin);
  loc.c = kn.cw[k];
  loc.W = kn.cw[k + 1] - kn.cw[k];
  loc.h = kn.ch[k];
  loc.H = kn.ch[k + 1] - kn.ch[k];
  loc.d0 = knot_derivative(p, cfg, k);
  loc.d1 = knot_derivative(p, cfg, k + 1);
  const T s = loc.H / loc.W;
  const T a = loc.d0 + loc.d1 - T(2) * s;
  if (inverse) {
    const T dy = xin - loc.h;
    const T qa = dy * a + loc.H * (s - loc.d0);
    const T qb = loc.H * loc.d0 - dy * a;
    const T qc = -s * dy;
    const T disc = qb * qb - T(4) * qa * qc;
    const T root = (T(2) * qc) / (-qb - sqrt(disc));
    loc.theta = root;
    out = root * loc.W + loc.c;
  } else {
    loc.theta = (xin - loc.c) / loc.W;
  }
  const T th = loc.theta, t = th * (T(1) - th);
  const T den = s + a * t;
  const T dnum = s * s * (loc.d1 * th * th + T(2) * s * t + loc.d0 * (T(1) - th) * (T(1) - th));
  const T l = log(dnum / (den * den));
  if (inverse) {
    ld = -l;
  } else {
    const T num = loc.H * (s * th * th + loc.d0 * t);
    out = loc.h + num / den;
    ld = l;
  }
  return true;
}

// Gradients of the 7 local variables for the direction asked, given upstream grads of the output
// and of the log-det. For the inverse (x = f^-1(y)), implicit differentiation at the solved point:
//   G = g_out - g_ld * dL/dx,  dL/dy_in = G / f'(x),  d/dp = vjp_f(-G / f'(x), -g_ld).
// The returned .x is the gradient w.r.t. the element's INPUT (x forward, y inverse).
template <typename T>
MFLOW_HD Grad7<T> rq_local_backward(const Local<T>& loc, bool inverse, T g_out, T g_ld) {
  if (!inverse) return local_vjp(loc, g_out, g_ld);
  const T s = loc.H / loc.W, th = loc.theta, t = th * (T(1) - th);
  const T den = s + (loc.d0 + loc.d1 - T(2) * s) * t;
  const T fx = s * s * (loc.d1 * th * th + T(2) * s * t + loc.d0 * (T(1) - th) * (T(1) - th)) / (den * den);
  const T Lx = local_vjp(loc, T(0), T(1)).x;
  const T G = g_out - g_ld * Lx;
  Grad7<T> g = local_vjp(loc, -G / fx, -g_ld);
  g.x = G / fx;
  return g;
}

// Forward-mode: tangents of (output, log-det) from the tangents of the 7 local variables.
template <typename T>
MFLOW_HD void rq_local_jvp(const Local<T>& loc, bool inverse, const Grad7<T>& tan, T& t_out, T& t_ld) {
  const Grad7<T> gy = local_vjp(loc, T(1), T(0));
  const Grad7<T> gl = local_vjp(loc, T(0), T(1));
  if (!inverse) {
    t_out = dot7(gy, tan);
    t_ld = dot7(gl, tan);
    return;
  }
  // x = f^-1(y, p): dx = (dy - df/dp . dp) / f_x ; ld_inv = -L(x, p).
  Grad7<T> tp = tan;
  const T ty = tp.x;
  tp.x = T(0);
  const T tx = (ty - dot7(gy, tp)) / gy.x;
  t_out = tx;
  t_ld = -(gl.x * tx + dot7(gl, tp));
}

// Chain local-variable gradients to the raw parameters (softmax / cumsum / softplus), accumulating into gp.
template <typename T>
MFLOW_HD void knots_backward(const T* p, const Knots<T>& kn, const SplineConfig& cfg, int k, const Grad7<T>& g,
                             T* gp) {
  const int K = cfg.num_bins;
  const T R = T(2) * T(cfg.tail_bound);
  const T div = T(cfg.divisor);
  // widths (c, W) then heights (h, H): knot j (1..K-1) = lo + R * sum_{i<j} w_i
  for (int part = 0; part < 2; ++part) {
    const T* prob = part == 0 ? kn.pw : kn.ph;
    const T gc = part == 0 ? g.c : g.h;
    const T gW = part == 0 ? g.W : g.H;
    const T mb = part == 0 ? T(cfg.min_bin_width) : T(cfg.min_bin_height);
    const T gk = (k >= 1) ? gc - gW : T(0);           // gradient on knot k (if interior)
    const T gk1 = (k + 1 <= K - 1) ? gW : T(0);       // gradient on knot k+1 (if interior)
    T gprob[kMaxBins];
    T dotp = T(0);
    for (int i = 0; i < K; ++i) {
      T gw = T(0);
      if (i < k) gw += gk;
      if (i < k + 1) gw += gk1;
      gprob[i] = R * (T(1) - mb * K) * gw;
      dotp += prob[i] * gprob[i];
    }
    T* out = gp + part * K;
    for (int i = 0; i < K; ++i) out[i] = prob[i] * (gprob[i] - dotp) / div;
  }
  T* gd = gp + 2 * K;
  for (int j = 0; j < K - 1; ++j) gd[j] = T(0);
  if (k >= 1) gd[k - 1] += g.d0 * softplus_grad(p[2 * K + k - 1]);
  if (k + 1 <= K - 1) gd[k] += g.d1 * softplus_grad(p[2 * K + k]);
}

// Tangents of the 7 local variables (input tangent in .x) from tangents of the raw parameters.
template <typename T>
MFLOW_HD Grad7<T> knots_jvp(const T* p, const T* tp, const Knots<T>& kn, const SplineConfig& cfg, int k, T tx) {
  const int K = cfg.num_bins;
  const T R = T(2) * T(cfg.tail_bound);
  const T div = T(cfg.divisor);
  Grad7<T> tan;
  tan.x = tx;
  for (int part = 0; part < 2; ++part) {
    const T* prob = part == 0 ? kn.pw : kn.ph;
    const T* tu = tp + part * K;
    const T mb = part == 0 ? T(cfg.min_bin_width) : T(cfg.min_bin_height);
    T mean = T(0);
    for (int i = 0; i < K; ++i) mean += prob[i] * tu[i] / div;
    // tangent of knot j (interior) = R (1 - mb K) sum_{i<j} tprob_i
    T tk = T(0), tk1 = T(0), acc = T(0);
    for (int i = 0; i <= k && i < K; ++i) {
      if (i == k) tk = acc;
      acc += R * (T(1) - mb * K) * prob[i] * (tu[i] / div - mean);
    }
    tk1 = (k + 1 <= K - 1) ? acc : T(0);
    if (part == 0) {
      tan.c = tk;
      tan.W = tk1 - tan.c;
    } else {
      tan.h = tk;
      tan.H = tk1 - tan.h;
    }
  }
  tan.d0 = (k >= 1) ? softplus_grad(p[2 * K + k - 1]) * tp[2 * K + k - 1] : T(0);
  tan.d1 = (k + 1 <= K - 1) ? softplus_grad(p[2 * K + k]) * tp[2 * K + k] : T(0);
  return tan;
}

// ------------------------------------------------------------------------------------------------
// Affine coupling (RealNVP, Dinh et al. 2017) with nflows' scale = sigmoid(u + 2) + 1e-3:
//   forward y = x * scale + shift, log-det = sum log(scale); inverse x = (y - shift) / scale.
template <typename T>
MFLOW_HD void affine_eval(T x, T shift, T u, bool inverse, T& out, T& ld) {
  const T scale = T(1) / (T(1) + exp(-(u + T(2)))) + T(1e-3);
  if (inverse) {
    out = (x - shift) / scale;
    ld = -log(scale);
  } else {
    out = x * scale + shift;
    ld = log(scale);
  }
}

template <typename T>
MFLOW_HD void affine_backward(T x, T shift, T u, bool inverse, T g_out, T g_ld, T& gx, T& gshift, T& gu) {
  const T sig = T(1) / (T(1) + exp(-(u + T(2))));
  const T scale = sig + T(1e-3);
  T gscale;
  if (inverse) {
    gx = g_out / scale;
    gshift = -g_out / scale;
    gscale = -g_out * (x - shift) / (scale * scale) - g_ld / scale;
  } else {
    gx = g_out * scale;
    gshift = g_out;
    gscale = g_out * x + g_ld / scale;
  }
  gu = gscale * sig * (T(1) - sig);
}

template <typename T>
MFLOW_HD void affine_jvp(T x, T shift, T u, bool inverse, T tx, T tshift, T tu, T& t_out, T& t_ld) {
  T gx, gshift, gu;
  affine_backward(x, shift, u, inverse, T(1), T(0), gx, gshift, gu);
  t_out = gx * tx + gshift * tshift + gu * tu;
  affine_backward(x, shift, u, inverse, T(0), T(1), gx, gshift, gu);
  t_ld = gu * tu;
}

}  // namespace mflow
