// CPU kernels: one row (sample) per work item, rows split across threads with at::parallel_for.
// Each row copies its identity features, transforms its masked features and sums their log-dets,
// so the coupling layer's gather / scatter / sum are all done in this one pass.
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "elementwise.h"
#include "ops.h"
#include "vec_ops.h"

namespace mflow {

namespace {

inline int64_t row_grain(int64_t work_per_row, int64_t target = 2048) {
  return std::max<int64_t>(1, target / std::max<int64_t>(1, work_per_row));
}

template <typename T>
inline bool inside(T v, const SplineConfig& cfg) {
  const T B = T(cfg.tail_bound);
  return v >= -B && v <= B;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rq_forward_cpu(const at::Tensor& x, const at::Tensor& params,
                                                  const at::Tensor& tidx, bool inverse, const SplineArgs& a) {
  const SplineConfig cfg = make_config(a);
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0), P = params.size(2);
  const int64_t* idx = tidx.data_ptr<int64_t>();
  if (cfg.num_bins <= kMaxSimdBins && simd_available()) {  // element-parallel SIMD path
    auto out = x.clone();
    auto ld_el = at::empty({N, F}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_forward_simd", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const scalar_t* pp = params.data_ptr<scalar_t>();
      scalar_t* op = out.data_ptr<scalar_t>();
      scalar_t* lp = ld_el.data_ptr<scalar_t>();
      at::parallel_for(0, N * F, 512, [&](int64_t begin, int64_t end) {
        rq_forward_simd(xp, pp, idx, op, lp, begin, end, D, F, inverse, cfg);
      });
    });
    return {out, F == 1 ? ld_el.view({N}) : ld_el.sum(1)};
  }
  auto out = at::empty_like(x);
  auto ld = at::empty({N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_forward_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* pp = params.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* lp = ld.data_ptr<scalar_t>();
    at::parallel_for(0, N, row_grain(F * 64), [&](int64_t begin, int64_t end) {
      Knots<scalar_t> kn;
      Local<scalar_t> loc;
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* xr = xp + n * D;
        scalar_t* orow = op + n * D;
        std::copy(xr, xr + D, orow);
        scalar_t acc = 0;
        for (int64_t f = 0; f < F; ++f) {
          const scalar_t v = xr[idx[f]];
          if (!inside(v, cfg)) continue;
          const scalar_t* p = pp + (n * F + f) * P;
          build_knots(p, cfg, kn);
          int k;
          scalar_t o = 0, l = 0;
          rq_eval(v, p, kn, cfg, inverse, k, loc, o, l);
          orow[idx[f]] = o;
          acc += l;
        }
        lp[n] = acc;
      }
    });
  });
  return {out, ld};
}

std::tuple<at::Tensor, at::Tensor> rq_backward_cpu(const at::Tensor& x, const at::Tensor& params,
                                                   const at::Tensor& tidx, const at::Tensor& g_out,
                                                   const at::Tensor& g_ld, bool inverse, const SplineArgs& a) {
  const SplineConfig cfg = make_config(a);
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0), P = params.size(2);
  const int64_t* idx = tidx.data_ptr<int64_t>();
  if (cfg.num_bins <= kMaxSimdBins && simd_available()) {  // element-parallel SIMD path
    auto gx = g_out.clone();
    auto gp = at::empty_like(params);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_backward_simd", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const scalar_t* pp = params.data_ptr<scalar_t>();
      const scalar_t* go = g_out.data_ptr<scalar_t>();
      const scalar_t* gl = g_ld.data_ptr<scalar_t>();
      scalar_t* gxp = gx.data_ptr<scalar_t>();
      scalar_t* gpp = gp.data_ptr<scalar_t>();
      at::parallel_for(0, N * F, 256, [&](int64_t begin, int64_t end) {
        rq_backward_simd(xp, pp, idx, go, gl, gxp, gpp, begin, end, D, F, inverse, cfg);
      });
    });
    return {gx, gp};
  }
  auto gx = at::empty_like(x);
  auto gp = at::empty_like(params);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_backward_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* pp = params.data_ptr<scalar_t>();
    const scalar_t* go = g_out.data_ptr<scalar_t>();
    const scalar_t* gl = g_ld.data_ptr<scalar_t>();
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    scalar_t* gpp = gp.data_ptr<scalar_t>();
    at::parallel_for(0, N, row_grain(F * 128), [&](int64_t begin, int64_t end) {
      Knots<scalar_t> kn;
      Local<scalar_t> loc;
      for (int64_t n = begin; n < end; ++n) {
        std::copy(go + n * D, go + (n + 1) * D, gxp + n * D);
        for (int64_t f = 0; f < F; ++f) {
          const int64_t j = idx[f];
          const scalar_t v = xp[n * D + j];
          const scalar_t* p = pp + (n * F + f) * P;
          scalar_t* g = gpp + (n * F + f) * P;
          if (!inside(v, cfg)) {
            std::fill(g, g + P, scalar_t(0));
            continue;
          }
          build_knots(p, cfg, kn);
          int k;
          scalar_t o = 0, l = 0;
          rq_eval(v, p, kn, cfg, inverse, k, loc, o, l);
          const Grad7<scalar_t> g7 = rq_local_backward(loc, inverse, go[n * D + j], gl[n]);
          gxp[n * D + j] = g7.x;
          knots_backward(p, kn, cfg, k, g7, g);
        }
      }
    });
  });
  return {gx, gp};
}

std::tuple<at::Tensor, at::Tensor> rq_jvp_cpu(const at::Tensor& x, const at::Tensor& params, const at::Tensor& tidx,
                                              const at::Tensor& tx, const at::Tensor& tparams, bool inverse,
                                              const SplineArgs& a) {
  const SplineConfig cfg = make_config(a);
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0), P = params.size(2);
  auto tout = at::empty_like(x);
  auto tld = at::empty({N}, x.options());
  const int64_t* idx = tidx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_jvp_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* pp = params.data_ptr<scalar_t>();
    const scalar_t* txp = tx.data_ptr<scalar_t>();
    const scalar_t* tpp = tparams.data_ptr<scalar_t>();
    scalar_t* top = tout.data_ptr<scalar_t>();
    scalar_t* tlp = tld.data_ptr<scalar_t>();
    at::parallel_for(0, N, row_grain(F * 128), [&](int64_t begin, int64_t end) {
      Knots<scalar_t> kn;
      Local<scalar_t> loc;
      for (int64_t n = begin; n < end; ++n) {
        std::copy(txp + n * D, txp + (n + 1) * D, top + n * D);
        scalar_t acc = 0;
        for (int64_t f = 0; f < F; ++f) {
          const int64_t j = idx[f];
          const scalar_t v = xp[n * D + j];
          if (!inside(v, cfg)) continue;
          const scalar_t* p = pp + (n * F + f) * P;
          build_knots(p, cfg, kn);
          int k;
          scalar_t o = 0, l = 0;
          rq_eval(v, p, kn, cfg, inverse, k, loc, o, l);
          const Grad7<scalar_t> tan = knots_jvp(p, tpp + (n * F + f) * P, kn, cfg, k, txp[n * D + j]);
          scalar_t t_o, t_l;
          rq_local_jvp(loc, inverse, tan, t_o, t_l);
          top[n * D + j] = t_o;
          acc += t_l;
        }
        tlp[n] = acc;
      }
    });
  });
  return {tout, tld};
}

// ---------------------------------------------------------------------------------------------- affine
std::tuple<at::Tensor, at::Tensor> affine_forward_cpu(const at::Tensor& x, const at::Tensor& params,
                                                      const at::Tensor& tidx, bool inverse) {
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0);
  auto out = at::empty_like(x);
  auto ld = at::empty({N}, x.options());
  const int64_t* idx = tidx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_forward_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* pp = params.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* lp = ld.data_ptr<scalar_t>();
    at::parallel_for(0, N, row_grain(D + 8 * F), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        std::copy(xp + n * D, xp + (n + 1) * D, op + n * D);
        scalar_t acc = 0;
        for (int64_t f = 0; f < F; ++f) {
          scalar_t o = 0, l = 0;
          affine_eval(xp[n * D + idx[f]], pp[n * 2 * F + f], pp[n * 2 * F + F + f], inverse, o, l);
          op[n * D + idx[f]] = o;
          acc += l;
        }
        lp[n] = acc;
      }
    });
  });
  return {out, ld};
}

std::tuple<at::Tensor, at::Tensor> affine_backward_cpu(const at::Tensor& x, const at::Tensor& params,
                                                       const at::Tensor& tidx, const at::Tensor& g_out,
                                                       const at::Tensor& g_ld, bool inverse) {
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0);
  auto gx = at::empty_like(x);
  auto gp = at::empty_like(params);
  const int64_t* idx = tidx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_backward_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* pp = params.data_ptr<scalar_t>();
    const scalar_t* go = g_out.data_ptr<scalar_t>();
    const scalar_t* gl = g_ld.data_ptr<scalar_t>();
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    scalar_t* gpp = gp.data_ptr<scalar_t>();
    at::parallel_for(0, N, row_grain(D + 8 * F), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        std::copy(go + n * D, go + (n + 1) * D, gxp + n * D);
        for (int64_t f = 0; f < F; ++f) {
          const int64_t j = idx[f];
          affine_backward(xp[n * D + j], pp[n * 2 * F + f], pp[n * 2 * F + F + f], inverse, go[n * D + j], gl[n],
                          gxp[n * D + j], gpp[n * 2 * F + f], gpp[n * 2 * F + F + f]);
        }
      }
    });
  });
  return {gx, gp};
}

std::tuple<at::Tensor, at::Tensor> affine_jvp_cpu(const at::Tensor& x, const at::Tensor& params,
                                                  const at::Tensor& tidx, const at::Tensor& tx,
                                                  const at::Tensor& tparams, bool inverse) {
  const int64_t N = x.size(0), D = x.size(1), F = tidx.size(0);
  auto tout = at::empty_like(x);
  auto tld = at::empty({N}, x.options());
  const int64_t* idx = tidx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_jvp_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* pp = params.data_ptr<scalar_t>();
    const scalar_t* txp = tx.data_ptr<scalar_t>();
    const scalar_t* tpp = tparams.data_ptr<scalar_t>();
    scalar_t* top = tout.data_ptr<scalar_t>();
    scalar_t* tlp = tld.data_ptr<scalar_t>();
    at::parallel_for(0, N, row_grain(D + 8 * F), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        std::copy(txp + n * D, txp + (n + 1) * D, top + n * D);
        scalar_t acc = 0;
        for (int64_t f = 0; f < F; ++f) {
          const int64_t j = idx[f];
          scalar_t t_o, t_l;
          affine_jvp(xp[n * D + j], pp[n * 2 * F + f], pp[n * 2 * F + F + f], inverse, txp[n * D + j],
                     tpp[n * 2 * F + f], tpp[n * 2 * F + F + f], t_o, t_l);
          top[n * D + j] = t_o;
          acc += t_l;
        }
        tlp[n] = acc;
      }
    });
  });
  return {tout, tld};
}

// ------------------------------------------------------------------------------------ log det(JᵀJ)
// Per matrix: lower triangle of G = JᵀJ, in-place Cholesky (Cholesky–Banachiewicz), 2 Σ log L_ii.
// Backward: d/dJ log det(JᵀJ) = 2 J G⁻¹, each row of J solved against L Lᵀ.
// Above this latent size the per-element loops lose to BLAS/LAPACK (Gram: D·d²/2 FMAs per element,
// triangular solves in backward: D·d²): use at::bmm + LAPACK Cholesky there, the fused loops below it.
constexpr int64_t kLoopMaxD = 3;

std::tuple<at::Tensor, at::Tensor, at::Tensor> logdet_gram_forward_cpu(const at::Tensor& jac) {
  const int64_t B = jac.size(0), D = jac.size(1), d = jac.size(2);
  if (d > kLoopMaxD) {
    auto [L, lapack_info] = at::linalg_cholesky_ex(at::bmm(jac.transpose(1, 2), jac));
    auto logdet = 2 * L.diagonal(0, -2, -1).log().sum(-1);
    return {logdet, L.contiguous(), lapack_info.ne(0).to(at::kInt)};
  }
  auto chol = at::zeros({B, d, d}, jac.options());
  auto logdet = at::empty({B}, jac.options());
  auto info = at::zeros({B}, jac.options().dtype(at::kInt));
  int* ip = info.data_ptr<int>();
  AT_DISPATCH_FLOATING_TYPES(jac.scalar_type(), "logdet_gram_forward_cpu", [&] {
    const scalar_t* jp = jac.data_ptr<scalar_t>();
    scalar_t* lp = chol.data_ptr<scalar_t>();
    scalar_t* op = logdet.data_ptr<scalar_t>();
    at::parallel_for(0, B, row_grain(D * d * d + d * d * d, 8192), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* J = jp + b * D * d;
        scalar_t* L = lp + b * d * d;
        for (int64_t r = 0; r < D; ++r) {
          const scalar_t* row = J + r * d;
          for (int64_t i = 0; i < d; ++i) {
            const scalar_t ri = row[i];
            for (int64_t j = 0; j <= i; ++j) L[i * d + j] += ri * row[j];
          }
        }
        scalar_t acc = 0;
        bool ok = true;
        for (int64_t i = 0; i < d && ok; ++i) {
          for (int64_t j = 0; j <= i; ++j) {
            scalar_t s = L[i * d + j];
            for (int64_t k = 0; k < j; ++k) s -= L[i * d + k] * L[j * d + k];
            if (i == j) {
              if (!(s > 0)) {
                ok = false;
                break;
              }
              L[i * d + i] = std::sqrt(s);
              acc += std::log(L[i * d + i]);
            } else {
              L[i * d + j] = s / L[j * d + j];
            }
          }
        }
        ip[b] = ok ? 0 : 1;
        op[b] = ok ? scalar_t(2) * acc : std::numeric_limits<scalar_t>::quiet_NaN();
      }
    });
  });
  return {logdet, chol, info};
}

at::Tensor logdet_gram_backward_cpu(const at::Tensor& jac, const at::Tensor& chol, const at::Tensor& g) {
  const int64_t B = jac.size(0), D = jac.size(1), d = jac.size(2);
  if (d > kLoopMaxD) {  // 2 g J G⁻¹ with G⁻¹ from the Cholesky factor
    return at::bmm(jac, at::cholesky_inverse(chol)).mul_((2 * g).view({B, 1, 1}));
  }
  auto gj = at::empty_like(jac);
  AT_DISPATCH_FLOATING_TYPES(jac.scalar_type(), "logdet_gram_backward_cpu", [&] {
    const scalar_t* jp = jac.data_ptr<scalar_t>();
    const scalar_t* lp = chol.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* op = gj.data_ptr<scalar_t>();
    at::parallel_for(0, B * D, row_grain(d * d, 8192), [&](int64_t begin, int64_t end) {
      for (int64_t br = begin; br < end; ++br) {
        const int64_t b = br / D;
        const scalar_t* L = lp + b * d * d;
        const scalar_t* row = jp + br * d;
        scalar_t* z = op + br * d;
        for (int64_t i = 0; i < d; ++i) {  // L y = J_r
          scalar_t s = row[i];
          for (int64_t k = 0; k < i; ++k) s -= L[i * d + k] * z[k];
          z[i] = s / L[i * d + i];
        }
        for (int64_t i = d - 1; i >= 0; --i) {  // Lᵀ z = y
          scalar_t s = z[i];
          for (int64_t k = i + 1; k < d; ++k) s -= L[k * d + i] * z[k];
          z[i] = s / L[i * d + i];
        }
        const scalar_t scale = scalar_t(2) * gp[b];
        for (int64_t i = 0; i < d; ++i) z[i] *= scale;
      }
    });
  });
  return gj;
}

}  // namespace mflow
