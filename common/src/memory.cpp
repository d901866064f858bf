#include "mla/memory.hpp"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mla {

void FreeDeleter::operator()(void* p) const {
  std::free(p);
}

LargePagesPtr alloc_large_pages(std::size_t bytes) {
  if (bytes > std::numeric_limits<std::size_t>::max() - kLargePage) throw std::bad_alloc();
  const std::size_t rounded =
      (std::max<std::size_t>(bytes, 1) + kLargePage - 1) / kLargePage * kLargePage;
  void* p = std::aligned_alloc(kLargePage, rounded);
  if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Advice only: a kernel without transparent huge pages, or with them off, says no (EINVAL),
  // and the memory is ordinary 4 KiB pages. Nothing to report.
  (void)madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return LargePagesPtr(static_cast<unsigned char*>(p));
}

}  // namespace mla
