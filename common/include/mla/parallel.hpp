#pragma once
/// @file parallel.hpp
/// @brief An OpenMP loop that lets exceptions out, and what a `threads` option of 0 means.
///
/// An exception that leaves an OpenMP parallel region calls std::terminate (OpenMP 5.2, §2.1:
/// a structured block must be exited only at its end), so a kernel that throws from a worker —
/// an exercise stub, a failed allocation — would abort the program instead of reporting. The
/// loop below catches what a body throws, lets the other iterations finish, and rethrows the
/// first exception on the calling thread once the team has joined.

#include <algorithm>
#include <exception>
#include <thread>

namespace mla {

/// @addtogroup core
/// @{

/// The thread count a `threads` setting asks for: `threads` itself when positive, else (0, the
/// default of every `--threads` option and kernel argument, or negative) every hardware thread —
/// at least 1, since std::thread::hardware_concurrency() returns 0 when it cannot tell.
/// `default_threads()` alone is "all cores".
inline int default_threads(int threads = 0) {
  return threads > 0 ? threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

namespace detail {

/// `body(i)` inside a parallel region, catching what it throws: the first exception of the
/// region goes to `error` (which the caller rethrows once the team has joined).
template <class Body>
void run_caught(Body& body, long i, std::exception_ptr& error) {
  try {
    body(i);
  } catch (...) {
#pragma omp critical(mla_parallel_for_error)
    if (!error) error = std::current_exception();
  }
}

}  // namespace detail

/// Run `body(i)` for i in [0, n) on `threads` OpenMP threads (dynamic schedule, one iteration
/// at a time: the iterations of our kernels are uneven). With `threads <= 1` it runs inline.
/// The first exception a body throws is rethrown here after every thread has stopped.
template <class Body>
void parallel_for(long n, int threads, Body&& body) {
  std::exception_ptr error;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
  for (long i = 0; i < n; ++i) detail::run_caught(body, i, error);
  if (error) std::rethrow_exception(error);
}

/// Two loops in one parallel region (arguments in parallel_for's order): `first(i)` for i in
/// [0, n1) as parallel_for runs them, then, once every thread is done with those, `then(j)` for
/// j in [0, n2) (static schedule: even pieces) — the second loop may read what any iteration of
/// the first wrote. One team start instead of two; for a decode step of 0.2 ms that is a
/// microsecond or two. If an iteration of the first loop throws, the second does not run; the
/// first exception is rethrown here.
template <class First, class Then>
void parallel_for_then(long n1, long n2, int threads, First&& first, Then&& then) {
  // Two slots: the first loop's is final at its barrier, so every thread reads the same value
  // there, while the second loop may still be writing its own.
  std::exception_ptr error_first, error_then;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#pragma omp for schedule(dynamic, 1)
    for (long i = 0; i < n1; ++i) detail::run_caught(first, i, error_first);
    // The loop's implicit barrier: every `first` has finished and its writes are visible, so
    // every thread takes the same branch here (a worksharing loop needs the whole team).
    if (!error_first) {
#pragma omp for schedule(static)
      for (long j = 0; j < n2; ++j) detail::run_caught(then, j, error_then);
    }
  }
  if (error_first) std::rethrow_exception(error_first);
  if (error_then) std::rethrow_exception(error_then);
}

/// @}

}  // namespace mla
