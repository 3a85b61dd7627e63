// tunesmith's weight-only int8 matrix product for CPUs with AVX-512 or AVX2 (see inference/int8_kernel.py).
//
//   y[m, n] = bf16( sum_k bf16(x[m, k]) * w[n, k] * scale[n] ), returned widened to float32
//
// The same function as torch._weight_int8pack_mm (bfloat16 input, int8 weights [N, K] with one bfloat16
// scale per row, float32 accumulation, bfloat16 output), summed in another order. It exists for one reason:
// decoding one token reads every weight once from memory, and PyTorch's kernel streams them at about half
// the bandwidth two cores have, because nothing fetches the next weights ahead of the loads. Here each
// weight row is prefetched PREFETCH bytes ahead, one cache line at a time.
//
// Every output element is summed in the same order whatever M is, so a row's result does not depend on
// the batch it is in (batched, prefilled and single-token results agree bit for bit).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if !defined(__AVX512F__) && !(defined(__AVX2__) && defined(__FMA__))
#error "tunesmith's int8 kernel needs AVX-512 or AVX2 with FMA"
#endif

namespace {

constexpr int64_t PREFETCH = 4096;  // bytes ahead in each weight row (measured: 2048 to 8192 all pay)
constexpr int NB = 4;               // weight rows per group: four streams read side by side

inline float round_bf16(float v) {  // round to nearest even, as PyTorch's float -> bfloat16 conversion
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x7fffu + ((u >> 16) & 1u);
  else if (u & 0x007fffffu) u |= 0x00400000u;  // NaN stays a (quiet) NaN
  u &= 0xffff0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

#if defined(__AVX512F__)
constexpr int MB = 4;  // input rows per tile: 16 accumulators of 32
const char* ISA = "avx512";

inline __m512 widen16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

template <int MR, int NR>
inline void tile(const float* x, int64_t K, const int8_t* w, float out[MB][NB]) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    if ((k & 63) == 0)
      for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(w + j * K + k + PREFETCH), _MM_HINT_T0);
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = widen16(w + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * K + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  if (k < K) {
    const __mmask16 m = static_cast<__mmask16>((1u << (K - k)) - 1u);
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j)
      wv[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, w + j * K + k)));
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + i * K + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i][j] = _mm512_reduce_add_ps(acc[i][j]);
}
#else
constexpr int MB = 2;  // input rows per tile: 8 accumulators of 16
const char* ISA = "avx2";

inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

template <int MR, int NR>
inline void tile(const float* x, int64_t K, const int8_t* w, float out[MB][NB]) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    if ((k & 63) == 0)
      for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(w + j * K + k + PREFETCH), _MM_HINT_T0);
    __m256 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = widen8(w + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * K + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float s = hsum(acc[i][j]);
      for (int64_t t = k; t < K; ++t) s += x[i * K + t] * float(w[j * K + t]);
      out[i][j] = s;
    }
}
#endif

template <int MR>
inline void tile_rows(int nr, const float* x, int64_t K, const int8_t* w, float out[MB][NB]) {
  switch (nr) {
    case 4: tile<MR, 4>(x, K, w, out); break;
    case 3: tile<MR, 3>(x, K, w, out); break;
    case 2: tile<MR, 2>(x, K, w, out); break;
    default: tile<MR, 1>(x, K, w, out); break;
  }
}

inline void tile_any(int mr, int nr, const float* x, int64_t K, const int8_t* w, float out[MB][NB]) {
#if defined(__AVX512F__)
  switch (mr) {
    case 4: tile_rows<4>(nr, x, K, w, out); return;
    case 3: tile_rows<3>(nr, x, K, w, out); return;
    case 2: tile_rows<2>(nr, x, K, w, out); return;
    default: tile_rows<1>(nr, x, K, w, out); return;
  }
#else
  if (mr == 2) tile_rows<2>(nr, x, K, w, out);
  else tile_rows<1>(nr, x, K, w, out);
#endif
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "int8_linear: x must be a contiguous float32 CPU tensor [M, K]");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.is_contiguous() && w.size(1) == x.size(1),
              "int8_linear: w must be a contiguous int8 tensor [N, K] with x's K");
  TORCH_CHECK(scales.dim() == 1 && scales.scalar_type() == at::kBFloat16 && scales.is_contiguous() &&
                  scales.numel() == w.size(0),
              "int8_linear: scales must be a contiguous bfloat16 tensor [N]");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  std::vector<float> xr(static_cast<size_t>(M * K));  // the input as the bfloat16 numbers it is taken as
  const float* xp = x.data_ptr<float>();
  for (int64_t i = 0; i < M * K; ++i) xr[i] = round_bf16(xp[i]);
  float* yp = y.data_ptr<float>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  const int64_t groups = (N + NB - 1) / NB;
  at::parallel_for(0, groups, 8, [&](int64_t g0, int64_t g1) {
    float out[MB][NB];
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n0 = g * NB;
      const int nr = static_cast<int>(std::min<int64_t>(NB, N - n0));
      for (int64_t m0 = 0; m0 < M; m0 += MB) {
        const int mr = static_cast<int>(std::min<int64_t>(MB, M - m0));
        tile_any(mr, nr, xr.data() + m0 * K, K, wp + n0 * K, out);
        for (int i = 0; i < mr; ++i)
          for (int j = 0; j < nr; ++j)
            yp[(m0 + i) * N + n0 + j] = round_bf16(out[i][j] * bf16_bits_to_float(sp[n0 + j]));
      }
    }
  });
  return y;
}

std::string isa() { return ISA; }

}  // namespace

TORCH_LIBRARY(tunesmith_kernels, m) {
  m.def("int8_linear(Tensor x, Tensor w, Tensor scales) -> Tensor");
  m.def("isa() -> str", &isa);
}

TORCH_LIBRARY_IMPL(tunesmith_kernels, CPU, m) { m.impl("int8_linear", &int8_linear); }
