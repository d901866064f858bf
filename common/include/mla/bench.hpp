/// @file bench.hpp
/// @brief Timing that survives a noisy, shared machine: warm-up, median of runs, ratios in one run.
///
/// Absolute times differ from machine to machine and from minute to minute; the ratio of two
/// timings taken in the same run, each the median of several runs, is what tests may assert.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <ctime>
#include <vector>

namespace mla {

/// @addtogroup core
/// @{

/// Seconds since an arbitrary epoch (steady clock).
inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// CPU seconds the calling thread has run (POSIX CLOCK_THREAD_CPUTIME_ID). Unlike now_seconds it
/// does not advance while the thread waits for a core, so on a machine crowded with other jobs
/// it times single-threaded work without the scheduler's share (a neighbour can still slow the
/// work itself, through the caches and the memory bus).
inline double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Keeps a value alive so the optimizer cannot delete the work that produced it.
template <class T>
inline void do_not_optimize(const T& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}

/// Timing of one piece of work.
struct Timing {
  double median = 0.0;   ///< seconds, median over the runs
  double min = 0.0;      ///< seconds, fastest run
  std::size_t runs = 0;  ///< timed runs (each the mean of its repetitions of the work)
};

/// Run `fn` `warmup` times untimed, then `runs` times timed; return the median and the minimum.
/// If the runs are very short, each timed run repeats `fn` enough times to last ~`min_seconds`.
template <class F>
Timing time_it(F&& fn, std::size_t runs = 5, std::size_t warmup = 1, double min_seconds = 1e-3) {
  for (std::size_t i = 0; i < warmup; ++i) fn();
  // Calibrate: how many calls make one timed run long enough for the clock to resolve it?
  std::size_t reps = 1;
  for (;;) {
    const double t0 = now_seconds();
    for (std::size_t r = 0; r < reps; ++r) fn();
    const double dt = now_seconds() - t0;
    if (dt >= min_seconds || reps >= (std::size_t{1} << 20)) break;
    reps *= 2;
  }
  std::vector<double> t(runs == 0 ? 1 : runs);
  for (auto& s : t) {
    const double t0 = now_seconds();
    for (std::size_t r = 0; r < reps; ++r) fn();
    s = (now_seconds() - t0) / static_cast<double>(reps);
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front(), t.size()};
}

/// Speed ratio `slow / fast` of two pieces of work timed alternately in the same run, so that a
/// noisy neighbour slows both alike. Returns median(slow) / median(fast). clock: now_seconds, or
/// thread_cpu_seconds for work that runs on the calling thread alone.
template <class Slow, class Fast>
double speedup(Slow&& slow, Fast&& fast, std::size_t runs = 5, double (*clock)() = now_seconds) {
  std::vector<double> a, b;
  slow();  // warm-up both
  fast();
  for (std::size_t i = 0; i < runs; ++i) {
    double t0 = clock();
    slow();
    a.push_back(clock() - t0);
    t0 = clock();
    fast();
    b.push_back(clock() - t0);
  }
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  return a[a.size() / 2] / std::max(b[b.size() / 2], 1e-12);
}

/// @}

}  // namespace mla
