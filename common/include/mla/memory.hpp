#pragma once
/// @file memory.hpp
/// @brief Memory for large arrays that kernels stream through: in 2 MiB pages where the OS
///        offers them.
///
/// A decode step reads the whole cache once, 2,304 bytes a token in fp32: 75 MB at 32K tokens.
/// With 4 KiB pages that is a TLB miss (a page-table walk) every 4 KiB, and a software prefetch
/// that misses the TLB waits for its walk too: measured on a Zen 4, one core streaming 64-token
/// fp32 tiles at 16 heads, the step ran at 80% of the FMA peak with 4 KiB pages and at 91% in
/// 2 MiB pages, the same code. Linux backs an anonymous mapping with 2 MiB pages ("transparent
/// huge pages") when the range is 2 MiB aligned and, in the common `madvise` setting, advised
/// MADV_HUGEPAGE; elsewhere the advice is skipped and the memory is ordinary.

#include <cstddef>
#include <memory>

namespace mla {

/// @addtogroup core
/// @{

/// The large-page size these helpers align to (x86-64's 2 MiB).
inline constexpr std::size_t kLargePage = std::size_t{2} << 20;

/// Frees memory from std::malloc or std::aligned_alloc (alloc_large_pages uses the latter).
struct FreeDeleter {
  /// std::free(p).
  void operator()(void* p) const;
};

/// Owned memory from alloc_large_pages.
using LargePagesPtr = std::unique_ptr<unsigned char, FreeDeleter>;

/// `bytes` bytes (rounded up to whole 2 MiB pages), 2 MiB aligned, advised as huge pages where
/// the OS takes the advice. Uninitialized, as malloc's. Throws std::bad_alloc (also for a size
/// that cannot be rounded up).
LargePagesPtr alloc_large_pages(std::size_t bytes);

/// @}

}  // namespace mla
