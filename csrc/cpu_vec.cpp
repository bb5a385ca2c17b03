// AVX2 kernels for the RQ spline: V elements at a time (8 floats / 4 doubles) with ATen's
// Vectorized<T> (SLEEF exp/log/log1p from libtorch). The bin lookup becomes V-wide blends, so every
// lane runs the same instructions; lanes outside the tail bound are blended back to the identity.
// Only this file is compiled for AVX2 (pragma below), and it is only called after a runtime CPU check,
// so the extension still loads and runs (scalar path) on CPUs without AVX2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MFLOW_SIMD 1
#pragma GCC target("avx2,fma")
// The pragma enables the instructions but not the feature macros that sleef.h and ATen test for.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY MFLOW_AVX2
#include <ATen/cpu/vec/vec.h>
#endif

#include <algorithm>

#include "vec_ops.h"

namespace mflow {

#ifdef MFLOW_SIMD

bool simd_available() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
inline Vec<T> select(const Vec<T>& mask, const Vec<T>& yes, const Vec<T>& no) {
  return Vec<T>::blendv(no, yes, mask);
}

template <typename T>
inline Vec<T> vsoftplus(const Vec<T>& x) {
  return select(x > Vec<T>(T(20)), x, x.exp().log1p());
}

template <typename T>
inline Vec<T> vsoftplus_grad(const Vec<T>& x) {
  const Vec<T> z = x.exp();
  return select(x > Vec<T>(T(20)), Vec<T>(T(1)), z / (z + Vec<T>(T(1))));
}

// Everything one group of V elements needs, in registers / on the stack.
template <typename T>
struct Group {
  static constexpr int V = Vec<T>::size();
  Vec<T> p[3 * kMaxSimdBins];  // raw parameters, transposed: p[j] lane l = params[(e + l) * P + j]
  Vec<T> pw[kMaxSimdBins], ph[kMaxSimdBins];
  Vec<T> raw0, raw1;           // derivative pre-activations of the bin's two knots
  Vec<T> v, inside, kf;        // input, in-bound mask, bin index (as T)
  Local<Vec<T>> loc;
};

template <typename T>
inline void vsoftmax(const Vec<T>* u, int K, const Vec<T>& div, Vec<T>* prob) {
  for (int i = 0; i < K; ++i) prob[i] = u[i] / div;
  Vec<T> m = prob[0];
  for (int i = 1; i < K; ++i) m = at::vec::maximum(m, prob[i]);
  Vec<T> s(T(0));
  for (int i = 0; i < K; ++i) {
    prob[i] = (prob[i] - m).exp();
    s = s + prob[i];
  }
  for (int i = 0; i < K; ++i) prob[i] = prob[i] / s;
}

// Load V elements, build knots, find bins and fill the local variables (theta excluded).
template <typename T>
inline void load_group(Group<T>& g, const T* x, const T* params, const int64_t* tidx, int64_t e, int64_t D,
                       int64_t F, bool inverse, const SplineConfig& cfg) {
  constexpr int V = Group<T>::V;
  const int K = cfg.num_bins, P = 3 * K - 1;
  alignas(64) T buf[V];
  for (int l = 0; l < V; ++l) buf[l] = x[((e + l) / F) * D + tidx[(e + l) % F]];
  g.v = Vec<T>::loadu(buf);
  for (int j = 0; j < P; ++j) {
    for (int l = 0; l < V; ++l) buf[l] = params[(e + l) * P + j];
    g.p[j] = Vec<T>::loadu(buf);
  }
  const T B = T(cfg.tail_bound);
  const Vec<T> lo(-B), hi(B), one(T(1));
  g.inside = (g.v >= lo) & (g.v <= hi);
  const Vec<T> div(T(cfg.divisor));
  vsoftmax(g.p, K, div, g.pw);
  vsoftmax(g.p + K, K, div, g.ph);
  // knots: lo, (hi - lo) * cumsum(min + (1 - min K) prob) + lo, ..., hi; select the bin's two knots.
  const Vec<T> R(hi - lo);
  const Vec<T> mw(T(cfg.min_bin_width)), sw(T(1) - T(cfg.min_bin_width) * K);
  const Vec<T> mh(T(cfg.min_bin_height)), sh(T(1) - T(cfg.min_bin_height) * K);
  // bin index: number of knots <= v (last knot + 1e-6), minus one
  Vec<T> cw[kMaxSimdBins + 1], ch[kMaxSimdBins + 1];
  cw[0] = lo;
  ch[0] = lo;
  Vec<T> aw(T(0)), ah(T(0));
  for (int j = 1; j < K; ++j) {
    aw = aw + (mw + sw * g.pw[j - 1]);
    ah = ah + (mh + sh * g.ph[j - 1]);
    cw[j] = R * aw + lo;
    ch[j] = R * ah + lo;
  }
  cw[K] = hi;
  ch[K] = hi;
  const Vec<T>* knots = inverse ? ch : cw;
  Vec<T> cnt(T(0));
  for (int j = 0; j < K; ++j) cnt = cnt + ((g.v >= knots[j]) & one);
  cnt = cnt + ((g.v >= knots[K] + Vec<T>(T(1e-6))) & one);
  g.kf = cnt - one;
  Vec<T> c(T(0)), c1(T(1)), h(T(0)), h1(T(1));
  g.raw0 = Vec<T>(T(0));
  g.raw1 = Vec<T>(T(0));
  for (int j = 0; j < K; ++j) {
    const Vec<T> m = g.kf == Vec<T>(T(j));
    c = select(m, cw[j], c);
    c1 = select(m, cw[j + 1], c1);
    h = select(m, ch[j], h);
    h1 = select(m, ch[j + 1], h1);
    if (j >= 1) g.raw0 = select(m, g.p[2 * K + j - 1], g.raw0);
    if (j + 1 <= K - 1) g.raw1 = select(m, g.p[2 * K + j], g.raw1);
  }
  const Vec<T> md(T(cfg.min_derivative)), bd(T(cfg.boundary_derivative));
  g.loc.c = c;
  g.loc.W = c1 - c;
  g.loc.h = h;
  g.loc.H = h1 - h;
  g.loc.d0 = select(g.kf == Vec<T>(T(0)), bd, md + vsoftplus(g.raw0));
  g.loc.d1 = select(g.kf == Vec<T>(T(K - 1)), bd, md + vsoftplus(g.raw1));
}

// theta, output and log|det| of the direction asked (unmasked).
template <typename T>
inline void eval_group(Group<T>& g, bool inverse, Vec<T>& out, Vec<T>& ld) {
  Local<Vec<T>>& L = g.loc;
  const Vec<T> one(T(1)), two(T(2));
  const Vec<T> s = L.H / L.W;
  const Vec<T> a = L.d0 + L.d1 - two * s;
  if (inverse) {
    const Vec<T> dy = g.v - L.h;
    const Vec<T> qa = dy * a + L.H * (s - L.d0);
    const Vec<T> qb = L.H * L.d0 - dy * a;
    const Vec<T> qc = -s * dy;
    const Vec<T> disc = qb * qb - Vec<T>(T(4)) * qa * qc;
    L.theta = (two * qc) / (-qb - disc.sqrt());
    out = L.theta * L.W + L.c;
  } else {
    L.theta = (g.v - L.c) / L.W;
  }
  const Vec<T> th = L.theta, t = th * (one - th);
  const Vec<T> den = s + a * t;
  const Vec<T> dnum = s * s * (L.d1 * th * th + two * s * t + L.d0 * (one - th) * (one - th));
  const Vec<T> l = (dnum / (den * den)).log();
  if (inverse) {
    ld = -l;
  } else {
    out = L.h + L.H * (s * th * th + L.d0 * t) / den;
    ld = l;
  }
}

}  // namespace

template <typename T>
void rq_forward_simd(const T* x, const T* params, const int64_t* tidx, T* out, T* ld_el, int64_t e0, int64_t e1,
                     int64_t D, int64_t F, bool inverse, const SplineConfig& cfg) {
  constexpr int V = Group<T>::V;
  Group<T> g;
  alignas(64) T ob[V], lb[V];
  int64_t e = e0;
  for (; e + V <= e1; e += V) {
    load_group(g, x, params, tidx, e, D, F, inverse, cfg);
    Vec<T> o, l;
    eval_group(g, inverse, o, l);
    select(g.inside, o, g.v).store(ob);
    select(g.inside, l, Vec<T>(T(0))).store(lb);
    for (int i = 0; i < V; ++i) {
      out[((e + i) / F) * D + tidx[(e + i) % F]] = ob[i];
      ld_el[e + i] = lb[i];
    }
  }
  const int K = cfg.num_bins, P = 3 * K - 1;
  Knots<T> kn;
  Local<T> loc;
  for (; e < e1; ++e) {  // remainder: scalar
    const int64_t j = ((e) / F) * D + tidx[e % F];
    const T* p = params + e * P;
    build_knots(p, cfg, kn);
    int k;
    T o = x[j], l = T(0);
    rq_eval(x[j], p, kn, cfg, inverse, k, loc, o, l);
    out[j] = o;
    ld_el[e] = l;
  }
}

template <typename T>
void rq_backward_simd(const T* x, const T* params, const int64_t* tidx, const T* g_out, const T* g_ld, T* gx, T* gp,
                      int64_t e0, int64_t e1, int64_t D, int64_t F, bool inverse, const SplineConfig& cfg) {
  constexpr int V = Group<T>::V;
  const int K = cfg.num_bins, P = 3 * K - 1;
  Group<T> g;
  alignas(64) T buf[V];
  const Vec<T> zero(T(0)), one(T(1));
  const Vec<T> R(T(2) * T(cfg.tail_bound)), div(T(cfg.divisor));
  int64_t e = e0;
  for (; e + V <= e1; e += V) {
    load_group(g, x, params, tidx, e, D, F, inverse, cfg);
    Vec<T> o, l;
    eval_group(g, inverse, o, l);
    for (int i = 0; i < V; ++i) buf[i] = g_out[((e + i) / F) * D + tidx[(e + i) % F]];
    const Vec<T> go = Vec<T>::loadu(buf);
    for (int i = 0; i < V; ++i) buf[i] = g_ld[(e + i) / F];
    const Vec<T> gl = Vec<T>::loadu(buf);
    const Grad7<Vec<T>> g7 = rq_local_backward(g.loc, inverse, go, gl);
    Vec<T> grad[3 * kMaxSimdBins];
    // widths (c, W) and heights (h, H) through cumsum and softmax
    for (int part = 0; part < 2; ++part) {
      const Vec<T>* prob = part == 0 ? g.pw : g.ph;
      const Vec<T> gc = part == 0 ? g7.c : g7.h;
      const Vec<T> gW = part == 0 ? g7.W : g7.H;
      const T mb = part == 0 ? T(cfg.min_bin_width) : T(cfg.min_bin_height);
      const Vec<T> gk = select(g.kf >= one, gc - gW, zero);
      const Vec<T> gk1 = select(g.kf <= Vec<T>(T(K - 2)), gW, zero);
      const Vec<T> scale = R * Vec<T>(T(1) - mb * K);
      Vec<T> gprob[kMaxSimdBins];
      Vec<T> dotp(T(0));
      for (int i = 0; i < K; ++i) {
        const Vec<T> fi = Vec<T>(T(i));
        const Vec<T> gw = select(fi < g.kf, gk, zero) + select(fi < g.kf + one, gk1, zero);
        gprob[i] = scale * gw;
        dotp = dotp + prob[i] * gprob[i];
      }
      for (int i = 0; i < K; ++i) grad[part * K + i] = prob[i] * (gprob[i] - dotp) / div;
    }
    const Vec<T> gd0 = g7.d0 * vsoftplus_grad(g.raw0), gd1 = g7.d1 * vsoftplus_grad(g.raw1);
    for (int j = 0; j < K - 1; ++j) {
      const Vec<T> fj = Vec<T>(T(j));
      grad[2 * K + j] = select(g.kf - one == fj, gd0, zero) + select(g.kf == fj, gd1, zero);
    }
    for (int j = 0; j < P; ++j) {
      select(g.inside, grad[j], zero).store(buf);
      for (int i = 0; i < V; ++i) gp[(e + i) * P + j] = buf[i];
    }
    select(g.inside, g7.x, go).store(buf);
    for (int i = 0; i < V; ++i) gx[((e + i) / F) * D + tidx[(e + i) % F]] = buf[i];
  }
  Knots<T> kn;
  Local<T> loc;
  for (; e < e1; ++e) {  // remainder: scalar
    const int64_t j = (e / F) * D + tidx[e % F];
    const T* p = params + e * P;
    T* gpe = gp + e * P;
    const T B = T(cfg.tail_bound);
    if (!(x[j] >= -B && x[j] <= B)) {
      std::fill(gpe, gpe + P, T(0));
      continue;
    }
    build_knots(p, cfg, kn);
    int k;
    T o = T(0), l = T(0);
    rq_eval(x[j], p, kn, cfg, inverse, k, loc, o, l);
    const Grad7<T> g7 = rq_local_backward(loc, inverse, g_out[j], g_ld[e / F]);
    gx[j] = g7.x;
    knots_backward(p, kn, cfg, k, g7, gpe);
  }
}

#else  // no SIMD build: never called (simd_available() is false)

bool simd_available() { return false; }

template <typename T>
void rq_forward_simd(const T*, const T*, const int64_t*, T*, T*, int64_t, int64_t, int64_t, int64_t, bool,
                     const SplineConfig&) {}

template <typename T>
void rq_backward_simd(const T*, const T*, const int64_t*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t,
                      int64_t, bool, const SplineConfig&) {}

#endif

template void rq_forward_simd<float>(const float*, const float*, const int64_t*, float*, float*, int64_t, int64_t,
                                     int64_t, int64_t, bool, const SplineConfig&);
template void rq_forward_simd<double>(const double*, const double*, const int64_t*, double*, double*, int64_t,
                                      int64_t, int64_t, int64_t, bool, const SplineConfig&);
template void rq_backward_simd<float>(const float*, const float*, const int64_t*, const float*, const float*, float*,
                                      float*, int64_t, int64_t, int64_t, int64_t, bool, const SplineConfig&);
template void rq_backward_simd<double>(const double*, const double*, const int64_t*, const double*, const double*,
                                       double*, double*, int64_t, int64_t, int64_t, int64_t, bool,
                                       const SplineConfig&);

}  // namespace mflow
