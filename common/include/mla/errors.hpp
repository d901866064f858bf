/// @file errors.hpp
/// @brief The error policy's two words: InputError for bad input, and the exit codes programs map
///        errors to.
///
/// Everything that reads input from outside (options, config files, checkpoints) throws
/// InputError naming what is wrong; mla::run_program (program.hpp) turns it into exit code 2.
/// Anything else that escapes is a bug or an exhausted machine: exit code 1.
#pragma once

#include <stdexcept>

namespace mla {

/// @addtogroup core
/// @{

/// Bad input from the user: an option, a config file, a weights file. Programs exit with code 2.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Exit codes shared by all programs.
enum ExitCode : int { kExitOk = 0, kExitFailed = 1, kExitBadInput = 2 };

/// @}

}  // namespace mla
