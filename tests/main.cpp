// The one main() of the test binary; the tests live in test_*.cpp, tagged by chapter.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
