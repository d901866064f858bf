/// @file exercise.hpp
/// @brief Exercise mode: with `-DMLA_EXERCISES=ON` (preset `exercises`) each chapter's key
///        functions are replaced by stubs that throw, so the chapter's tests fail with a message
///        that says which exercise to do, until the learner fills the function in.
///        `-DMLA_EXERCISES_FROM=5` keeps chapters 1-4 solved and starts the exercises at chapter 5.
///
/// A chapter marks a key function like this:
/// @code
/// Mat absorb_query(const Mat& q, const Mat& W_UK, std::size_t heads) {
/// #if MLA_EXERCISES
///   MLA_EXERCISE("5.1", "absorb_query()", "q̃_h = W_UK,hᵀ q_h: one (d_h, d_c) block per head");
/// #else
///   ... the solution ...
/// #endif
/// }
/// @endcode
#pragma once

#include <stdexcept>
#include <string>

#ifndef MLA_EXERCISES
/// 1 where CMake builds a chapter's library in exercise mode (`-DMLA_EXERCISES=ON`, chapter >=
/// MLA_EXERCISES_FROM), else 0: key functions test it to compile their stub, not their solution.
#define MLA_EXERCISES 0
#endif

namespace mla {

/// @addtogroup core
/// @{

/// Thrown by an exercise stub: "exercise 5.1: implement absorb_query() — hint: …".
struct ExerciseNotDone : std::logic_error {
  using std::logic_error::logic_error;
};

/// Throw ExerciseNotDone for exercise `id` (chapter.number), naming the function and a hint.
[[noreturn]] inline void exercise_stub(const char* id, const char* function, const char* hint) {
  throw ExerciseNotDone(std::string("exercise ") + id + ": implement " + function +
                        " — hint: " + hint);
}

/// @}

}  // namespace mla

/// Body of an exercise stub (see exercise.hpp).
#define MLA_EXERCISE(id, function, hint) ::mla::exercise_stub(id, function, hint)
