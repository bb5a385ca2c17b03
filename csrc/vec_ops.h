// SIMD (AVX2) versions of the RQ-spline element loops, over a range [e0, e1) of flattened elements
// e = n * F + f. The caller has already copied the pass-through values (out = x, gx = g_out);
// these write the transformed features, per-element log-dets and parameter gradients.
#pragma once

#include <cstdint>

#include "elementwise.h"

namespace mflow {

// True when this build has the AVX2 path and the CPU running it supports AVX2 + FMA.
bool simd_available();

template <typename T>
void rq_forward_simd(const T* x, const T* params, const int64_t* tidx, T* out, T* ld_el, int64_t e0, int64_t e1,
                     int64_t D, int64_t F, bool inverse, const SplineConfig& cfg);

template <typename T>
void rq_backward_simd(const T* x, const T* params, const int64_t* tidx, const T* g_out, const T* g_ld, T* gx, T* gp,
                      int64_t e0, int64_t e1, int64_t D, int64_t F, bool inverse, const SplineConfig& cfg);

constexpr int kMaxSimdBins = 16;

}  // namespace mflow
