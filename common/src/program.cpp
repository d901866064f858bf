#include "mla/program.hpp"

#include <filesystem>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "mla/random.hpp"

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

}  // namespace mla
