#include "mla/program.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "mla/random.hpp"
#include "mla/table.hpp"

#ifndef MLA_DEFAULT_RESULTS_DIR
#define MLA_DEFAULT_RESULTS_DIR "results"
#endif
#ifndef MLA_DEFAULT_DATA_DIR
#define MLA_DEFAULT_DATA_DIR "data"
#endif

namespace mla {

int parse_options(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return kExitOk;
  } catch (const CLI::CallForAllHelp&) {
    std::cout << app.help("", CLI::AppFormatMode::All);
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    std::cerr << std::filesystem::path(app.get_name()).filename().string()
              << ": error: " << e.what() << "\n"
              << "Run with --help for the options.\n";
    return kExitBadInput;
  }
  return -1;
}

void add_seed_option(CLI::App& app, std::uint64_t& seed) {
  seed = kDefaultSeed;
  app.add_option("--seed", seed, "Seed of the random weights and inputs")
      ->capture_default_str()
      // An unsigned option would silently wrap "-5" to 18446744073709551611: refuse it instead.
      ->check(CLI::Validator(
          [](std::string& s) {
            return s.find('-') == std::string::npos ? std::string()
                                                    : "must be a non-negative integer, got " + s;
          },
          "NON-NEGATIVE"));
}

int run_program(const char* name, const std::function<int()>& body) {
  try {
    return body();
  } catch (const InputError& e) {
    std::cerr << name << ": error: " << e.what() << "\n";
    return kExitBadInput;
  } catch (const std::bad_alloc&) {
    std::cerr << name << ": error: out of memory\n";
    return kExitFailed;
  } catch (const std::exception& e) {
    std::cerr << name << ": error: " << e.what() << "\n";
    return kExitFailed;
  }
}

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
