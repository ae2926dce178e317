// Helpers shared by the PQ and sparse-attention tests: seeded random data and error norms.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace spt::test {

inline std::vector<float> RandomNormal(std::size_t n, uint32_t seed, float stddev = 1.f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, stddev);
  std::vector<float> out(n);
  for (auto& x : out) x = dist(gen);
  return out;
}

inline std::vector<double> ToDouble(const std::vector<float>& x) { return {x.begin(), x.end()}; }

// ||a - b||_2 / max(||b||_2, floor): the relative error used by the gradient checks.
template <typename A, typename B>
double RelL2Error(const std::vector<A>& a, const std::vector<B>& b, double floor = 1e-12) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += d * d;
    den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return std::sqrt(num) / std::max(std::sqrt(den), floor);
}

// max_i |a_i - b_i| / max(|b|_inf, floor)
template <typename A, typename B>
double RelMaxError(const std::vector<A>& a, const std::vector<B>& b, double floor = 1e-12) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return num / std::max(den, floor);
}

// Central finite differences of a scalar function f over every element of x (x is restored afterwards).
template <typename F>
std::vector<double> FiniteDifference(std::vector<double>& x, F&& f, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double up = f();
    x[i] = keep - h;
    const double down = f();
    x[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

}  // namespace spt::test
