/// @file environment.hpp
/// @brief Where results and data live, how much memory is left, whether stdout is a terminal:
///        what programs and chapter libraries ask of the machine they run on.
#pragma once

#include <cstddef>
#include <string>

namespace mla {

/// @addtogroup core
/// @{

/// Folder the programs write CSV files into: `$MLA_RESULTS_DIR`, else the build's `results/`.
std::string results_dir();

/// The project's `data/` folder: `$MLA_DATA_DIR`, else the source tree's `data/`.
std::string data_dir();

/// Bytes of memory this machine can still give (MemAvailable), or 0 if unknown.
std::size_t available_memory_bytes();

/// Throws InputError naming `what` if `bytes` would not fit in the available memory (with a
/// margin), so a program refuses a too-big configuration before allocating rather than being
/// OOM-killed.
void check_memory(double bytes, const std::string& what);

/// True if standard output is a terminal (for shaded heatmaps and progress lines).
bool stdout_is_terminal();

/// @}

}  // namespace mla
