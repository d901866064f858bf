#include "mla/environment.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "mla/errors.hpp"
#include "mla/table.hpp"

#ifndef MLA_DEFAULT_RESULTS_DIR
#define MLA_DEFAULT_RESULTS_DIR "results"
#endif
#ifndef MLA_DEFAULT_DATA_DIR
#define MLA_DEFAULT_DATA_DIR "data"
#endif

namespace mla {

std::string results_dir() {
  if (const char* env = std::getenv("MLA_RESULTS_DIR"); env && *env) return env;
  return MLA_DEFAULT_RESULTS_DIR;
}

std::string data_dir() {
  if (const char* env = std::getenv("MLA_DATA_DIR"); env && *env) return env;
  return MLA_DEFAULT_DATA_DIR;
}

std::size_t available_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  std::size_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

void check_memory(double bytes, const std::string& what) {
  const double avail = static_cast<double>(available_memory_bytes());
  // Leave a quarter of what is free for everything else; unknown memory means no check.
  if (avail > 0 && bytes > 0.75 * avail) {
    throw InputError(what + " needs " + human_bytes(bytes) + " but only " + human_bytes(avail) +
                     " of memory is available; choose smaller sizes");
  }
}

bool stdout_is_terminal() {
  return isatty(fileno(stdout)) != 0;
}

}  // namespace mla
