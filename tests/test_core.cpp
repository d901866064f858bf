// Tests of the shared tensor core (common/): linear, softmax, masks, RMSNorm, compare, tables.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "mla/compare.hpp"
#include "mla/json.hpp"
#include "mla/memory.hpp"
#include "mla/parallel.hpp"
#include "mla/random.hpp"
#include "mla/table.hpp"
#include "mla/tensor.hpp"

#include <xtensor/xview.hpp>

using namespace mla;

TEST_CASE("linear computes x times W transposed, as checkpoints store W", "[core]") {
  Rng rng(1);
  const Mat x = rng.normal(5, 7);
  const Mat W = rng.normal(3, 7);  // (out, in)
  const Mat y = linear(x, W);
  REQUIRE(y.shape(0) == 5);
  REQUIRE(y.shape(1) == 3);
  for (std::size_t i = 0; i < 5; ++i) {
    for (std::size_t o = 0; o < 3; ++o) {
      double ref = 0;
      for (std::size_t k = 0; k < 7; ++k) ref += double(x(i, k)) * W(o, k);
      CHECK(y(i, o) == Approx(ref).margin(1e-5).epsilon(1e-5));
    }
  }
  const Vec v = linear(Vec(xt::row(x, 2)), W);
  for (std::size_t o = 0; o < 3; ++o) CHECK(v(o) == Approx(y(2, o)).margin(1e-5));
  REQUIRE_THROWS_AS(linear(x, rng.normal(3, 6)), std::invalid_argument);
}

TEST_CASE("matmul multiplies without transposition", "[core]") {
  Rng rng(2);
  const Mat a = rng.normal(4, 6), b = rng.normal(6, 2);
  const Mat c = matmul(a, b);
  double ref = 0;
  for (std::size_t k = 0; k < 6; ++k) ref += double(a(3, k)) * b(k, 1);
  CHECK(c(3, 1) == Approx(ref).margin(1e-5));
}

TEST_CASE("softmax rows sum to one and survive huge logits", "[core]") {
  Mat s = {{1e4f, -1e4f, 0.0f}, {-1e4f, -1e4f + 1.0f, -1e4f}, {3.0f, 1.0f, 2.0f}};
  softmax_rows(s);
  for (std::size_t r = 0; r < 3; ++r) {
    double sum = 0;
    for (std::size_t c = 0; c < 3; ++c) {
      REQUIRE(std::isfinite(s(r, c)));
      sum += s(r, c);
    }
    CHECK(sum == Approx(1.0).margin(1e-6));
  }
  CHECK(s(0, 0) == Approx(1.0f));
  CHECK(s(1, 1) == Approx(std::exp(1.0) / (2 + std::exp(1.0))).margin(1e-6));
  CHECK(s(2, 0) == Approx(std::exp(1.0) / (1 + std::exp(-1.0) + std::exp(1.0))).margin(1e-6));
}

TEST_CASE("masked entries get weight 0, and a fully masked row becomes zeros", "[core]") {
  Mat s = {{0.5f, kMasked, 0.5f}, {kMasked, kMasked, kMasked}};
  softmax_rows(s);
  CHECK(s(0, 1) == 0.0f);
  CHECK(s(0, 0) == Approx(0.5f));
  for (std::size_t c = 0; c < 3; ++c) CHECK(s(1, c) == 0.0f);
}

TEST_CASE("causal mask hides exactly the future", "[core]") {
  const Mat m = causal_mask(4);
  for (std::size_t i = 0; i < 4; ++i)
    for (std::size_t j = 0; j < 4; ++j) CHECK((j > i ? std::isinf(m(i, j)) : m(i, j) == 0.0f));
  Mat s = xt::zeros<float>({2, 5});
  apply_causal_mask(s, 2);  // queries at positions 2 and 3
  CHECK(s(0, 2) == 0.0f);
  CHECK(std::isinf(s(0, 3)));
  CHECK(s(1, 3) == 0.0f);
  CHECK(std::isinf(s(1, 4)));
}

TEST_CASE("rmsnorm divides by the root mean square and scales by w", "[core]") {
  const Mat x = {{3.0f, 4.0f}};
  const Vec w = {1.0f, 2.0f};
  const Mat y = rmsnorm(x, w, 0.0f);
  const double rms = std::sqrt((9.0 + 16.0) / 2.0);
  CHECK(y(0, 0) == Approx(3.0 / rms));
  CHECK(y(0, 1) == Approx(8.0 / rms));
  REQUIRE_THROWS(rmsnorm(x, Vec({1.0f}), 1e-6f));
}

TEST_CASE("compare and allclose measure what they claim", "[core]") {
  const std::vector<float> ref = {1.0f, -2.0f, 100.0f};
  const std::vector<float> a = {1.0f, -2.001f, 100.01f};
  const Comparison c = compare(a, ref);
  CHECK(c.max_abs == Approx(0.01).epsilon(1e-3));
  CHECK(c.worst == 2);
  CHECK(c.max_rel == Approx(0.0005).epsilon(1e-2));
  CHECK(allclose(a, ref, 1.1e-2, 0.0));  // 100.01f is 100.0100021 in float
  CHECK_FALSE(allclose(a, ref, 1e-3, 0.0));
  CHECK(allclose(a, ref, 0.0, 1e-3));
  const std::vector<float> nan = {1.0f, std::nanf(""), 100.0f};
  CHECK_FALSE(compare(nan, ref).finite);
  CHECK_FALSE(allclose(nan, ref, 1.0, 1.0));
}

TEST_CASE("the same seed gives the same numbers, and linear weights have variance 1/fan_in",
          "[core]") {
  Rng a(7), b(7);
  CHECK((a.normal(3, 3) == b.normal(3, 3)));
  Rng r(9);
  const Mat W = r.linear_weight(256, 400);
  double ss = 0;
  for (float v : W) ss += double(v) * v;
  CHECK(ss / W.size() == Approx(1.0 / 400).epsilon(0.05));
}

TEST_CASE("number formatting for tables", "[core]") {
  CHECK(grouped(3997696) == "3,997,696");
  CHECK(grouped(576) == "576");
  CHECK(human_bytes(2048) == "2.0 KiB");
  Table t({"a", "b"});
  t.add({"x", "1"});
  REQUIRE_THROWS(t.add({"only one"}));
  CHECK(t.rows() == 1);
}

TEST_CASE("json fields: missing, wrong kind and negative sizes are errors naming the field",
          "[core]") {
  const auto j =
      parse_json(R"({"a": 3, "b": 2.0, "c": "x", "d": null, "e": -1, "f": 2.5})", "t.json");
  CHECK(json_field<int>(j, "a", "t.json") == 3);
  CHECK(json_field<std::size_t>(j, "b", "t.json") == 2);
  CHECK_FALSE(json_optional<int>(j, "d", "t.json").has_value());
  CHECK_THROWS_WITH(json_field<int>(j, "zz", "t.json"), Catch::Contains("'zz' is missing"));
  CHECK_THROWS_WITH(json_field<int>(j, "c", "t.json"), Catch::Contains("'c' is not an integer"));
  CHECK_THROWS_WITH(json_field<int>(j, "f", "t.json"), Catch::Contains("'f'"));
  CHECK_THROWS_WITH(json_field<std::size_t>(j, "e", "t.json"), Catch::Contains("non-negative"));
  CHECK_THROWS_AS(parse_json("{nope", "bad.json"), InputError);
}

TEST_CASE("json fields: out-of-range numbers are errors, never undefined behaviour", "[core]") {
  const auto j = parse_json(R"({"big": 38e46, "huge": 18446744073709551615, "i40": 1099511627776,
                               "neg": -5, "ok": 4096.0})",
                            "t.json");
  CHECK_THROWS_AS(json_field<std::size_t>(j, "big", "t.json"), InputError);
  CHECK_THROWS_AS(json_field<int>(j, "i40", "t.json"), InputError);  // would wrap to 0
  CHECK_THROWS_AS(json_field<long>(j, "huge", "t.json"), InputError);
  CHECK(json_field<unsigned long>(j, "huge", "t.json") == 18446744073709551615ul);
  CHECK_THROWS_AS(json_field<std::size_t>(j, "neg", "t.json"), InputError);
  CHECK(json_field<int>(j, "neg", "t.json") == -5);
  CHECK(json_field<std::size_t>(j, "ok", "t.json") == 4096);
  CHECK_THROWS_AS(parse_json(R"({"x": 1e999})", "t.json"),
                  InputError);  // out_of_range, not a crash
}

TEST_CASE("large-page memory is 2 MiB aligned and all of it is usable", "[core]") {
  for (std::size_t bytes : {std::size_t{1}, std::size_t{5000}, kLargePage, kLargePage + 1}) {
    INFO(bytes << " bytes");
    LargePagesPtr p = alloc_large_pages(bytes);
    REQUIRE(p);
    CHECK(reinterpret_cast<std::uintptr_t>(p.get()) % kLargePage == 0);
    std::memset(p.get(), 0xA5, bytes);  // under ASan, a short allocation would be reported here
    CHECK(p.get()[bytes - 1] == 0xA5);
  }
}

TEST_CASE("parallel_for runs every iteration and hands a worker's exception to the caller",
          "[core]") {
  for (int threads : {1, 2}) {
    INFO(threads << " thread(s)");
    std::vector<int> seen(100, 0);
    parallel_for(100, threads, [&](long i) { seen[static_cast<std::size_t>(i)] += 1; });
    for (int s : seen) CHECK(s == 1);
    // Without the catch inside the region, this would call std::terminate and abort the tests.
    std::vector<int> ran(100, 0);
    REQUIRE_THROWS_WITH(parallel_for(100, threads,
                                     [&](long i) {
                                       ran[static_cast<std::size_t>(i)] = 1;
                                       if (i == 37) throw std::runtime_error("item 37 failed");
                                     }),
                        "item 37 failed");
    for (int r : ran) CHECK(r == 1);  // the other iterations still ran
  }
}

TEST_CASE("parallel_for_then runs its second loop after every iteration of the first", "[core]") {
  for (int threads : {1, 2, 3}) {
    INFO(threads << " thread(s)");
    // The first loop writes 1..n1 (uneven work), the second reads all of them: a `then` that
    // started before some `first` had finished would see a zero and count it.
    const long n1 = 57, n2 = 40;
    std::vector<long> written(static_cast<std::size_t>(n1), 0);
    std::vector<long> total(static_cast<std::size_t>(n2), 0);
    parallel_for_then(
        n1, n2, threads,
        [&](long i) {
          volatile long spin = 0;
          for (long k = 0; k < 2000 * (i % 5); ++k) spin = spin + 1;
          written[static_cast<std::size_t>(i)] = i + 1;
        },
        [&](long j) {
          long sum = 0;
          for (long w : written) sum += w;
          total[static_cast<std::size_t>(j)] = sum;
        });
    for (long t : total) CHECK(t == n1 * (n1 + 1) / 2);
    // A failure in the first loop: rethrown, and the second loop does not run.
    std::vector<int> second(static_cast<std::size_t>(n2), 0);
    REQUIRE_THROWS_WITH(parallel_for_then(
                            n1, n2, threads,
                            [&](long i) {
                              if (i == 11) throw std::runtime_error("item 11 failed");
                            },
                            [&](long j) { second[static_cast<std::size_t>(j)] = 1; }),
                        "item 11 failed");
    for (int r : second) CHECK(r == 0);
    // A failure in the second loop: rethrown too, after its other iterations ran.
    std::vector<int> ran(static_cast<std::size_t>(n2), 0);
    REQUIRE_THROWS_WITH(parallel_for_then(
                            n1, n2, threads, [](long) {},
                            [&](long j) {
                              ran[static_cast<std::size_t>(j)] = 1;
                              if (j == 7) throw std::runtime_error("job 7 failed");
                            }),
                        "job 7 failed");
    for (int r : ran) CHECK(r == 1);
    // Empty loops: nothing runs, nothing breaks.
    int calls = 0;
    parallel_for_then(
        0, 0, threads, [&](long) { ++calls; }, [&](long) { ++calls; });
    CHECK(calls == 0);
  }
}
