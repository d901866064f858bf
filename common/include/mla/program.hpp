/// @file program.hpp
/// @brief What every chapter program shares: option parsing with exit codes, the seed, where
///        results and data live, errors for bad input, and a memory check before big allocations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace CLI {
class App;
}

namespace mla {

/// @addtogroup core
/// @{

/// Bad input from the user: an option, a config file, a weights file. Programs exit with code 2.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Exit codes shared by all programs.
enum ExitCode : int { kExitOk = 0, kExitFailed = 1, kExitBadInput = 2 };

/// Parse the command line. Returns -1 when the program should go on, otherwise the exit code to
/// return at once: 0 after `--help`, 2 (with a message naming the option) for anything invalid.
int parse_options(CLI::App& app, int argc, char** argv);

/// Add `--seed` (default kDefaultSeed) to a program.
void add_seed_option(CLI::App& app, std::uint64_t& seed);

/// Run a program's body, turning exceptions into a message on stderr and an exit code:
/// InputError -> 2, anything else -> 1. Never lets an exception escape `main`.
int run_program(const char* name, const std::function<int()>& body);

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
