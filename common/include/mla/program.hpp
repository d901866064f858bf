/// @file program.hpp
/// @brief What every chapter program shares: option parsing with exit codes, the seed, and the
///        run_program wrapper that turns errors into exit codes (library mla_app).
///
/// It also brings in errors.hpp (InputError, the exit codes) and environment.hpp (results and
/// data folders, the memory check), which live in the tensor core so that chapter libraries can
/// use them without linking the command-line parser.
#pragma once

#include <cstdint>
#include <functional>

#include "mla/environment.hpp"
#include "mla/errors.hpp"

namespace CLI {
class App;
}

namespace mla {

/// @addtogroup core
/// @{

/// Parse the command line. Returns -1 when the program should go on, otherwise the exit code to
/// return at once: 0 after `--help`, 2 (with a message naming the option) for anything invalid.
int parse_options(CLI::App& app, int argc, char** argv);

/// Add `--seed` (default kDefaultSeed) to a program.
void add_seed_option(CLI::App& app, std::uint64_t& seed);

/// Run a program's body, turning exceptions into a message on stderr and an exit code:
/// InputError -> 2, anything else -> 1. Never lets an exception escape `main`.
int run_program(const char* name, const std::function<int()>& body);

/// @}

}  // namespace mla
