// Chapter 2: decoding with a KV cache gives what recomputing everything gives, and is faster.
#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include "02_kv_cache/kv_cache.hpp"
#include "mla/bench.hpp"
#include "mla/compare.hpp"
#include "mla/random.hpp"
#include "support.hpp"

using namespace mla;
using namespace mla::ch02;

using mla::test::random_tokens;

TEST_CASE("cached generation equals generation that recomputes everything", "[ch02]") {
  Rng rng(21);
  const ToyDecoder model = random_decoder(3, 64, 97, rng);
  const std::vector<int> prompt = random_tokens(rng, 5, 97);
  const Generation slow = generate_recompute(model, prompt, 24);
  const Generation fast = generate_cached(model, prompt, 24);
  REQUIRE(slow.tokens.size() == 24);
  CHECK(fast.tokens == slow.tokens);
  const Comparison c = compare(fast.hidden, slow.hidden);
  INFO(c.describe());
  CHECK(c.finite);
  CHECK(c.max_abs <= 1e-5);
  // The generated tokens are not all the same (the model is not degenerate, so the check has
  // something to compare).
  CHECK(std::count(slow.tokens.begin(), slow.tokens.end(), slow.tokens[0]) < 24);
}

TEST_CASE("cached steps of any size give the rows of the full forward pass", "[ch02]") {
  Rng rng(22);
  const ToyDecoder model = random_decoder(2, 32, 50, rng);
  const std::vector<int> seq = random_tokens(rng, 20, 50);
  const Mat full = forward_full(model, seq);  // (20, 32)
  CachedDecoder dec(model);
  std::size_t pos = 0;
  for (std::size_t chunk : {7u, 1u, 1u, 5u, 6u}) {  // prefill, single tokens, then chunks
    const std::vector<int> part(seq.begin() + pos, seq.begin() + pos + chunk);
    const Mat out = dec.step(part);
    REQUIRE(out.shape(0) == chunk);
    for (std::size_t i = 0; i < chunk; ++i) {
      CHECK(allclose(&out(i, 0), &full(pos + i, 0), 32, 1e-5, 1e-4));
    }
    pos += chunk;
  }
  CHECK(dec.cache().tokens() == 20);
}

TEST_CASE("the cache holds 2 * layers * tokens * d_model numbers", "[ch02]") {
  Rng rng(23);
  const std::size_t L = 3, d = 16, T = 11;
  const ToyDecoder model = random_decoder(L, d, 30, rng);
  CachedDecoder dec(model);
  CHECK(dec.cache().floats() == 0);
  dec.step(random_tokens(rng, 4, 30));
  dec.step(random_tokens(rng, T - 4, 30));
  CHECK(dec.cache().tokens() == T);
  // Count what is actually stored, layer by layer, and compare with the formula.
  CHECK(dec.cache().floats() == 2 * L * T * d);
  CHECK(dec.cache().bytes() == kv_cache_bytes(L, T, d, sizeof(float)));
  CHECK(kv_cache_bytes(L, T, d, 2) * 2 == kv_cache_bytes(L, T, d, 4));
  // truncate() undoes steps, and the next step gives what it gave before.
  const std::vector<int> next = {7};
  const Mat first = dec.step(next);
  dec.truncate(T);
  CHECK(dec.cache().floats() == 2 * L * T * d);
  const Mat again = dec.step(next);
  CHECK(allclose(again, first, 0.0, 0.0));
}

TEST_CASE("a cached decode step is at least 3x faster than recomputing at T = 512",
          "[ch02][speed]") {
  Rng rng(24);
  const std::size_t T = 512, vocab = 256;
  const ToyDecoder model = random_decoder(4, 128, vocab, rng);
  const std::vector<int> seq = random_tokens(rng, T, vocab);
  std::vector<int> seq1 = seq;
  seq1.push_back(3);
  CachedDecoder dec(model);
  dec.step(seq);
  const double ratio = speedup(
      [&] {
        const Mat H = forward_full(model, seq1);
        do_not_optimize(next_token(model, &H(T, 0)));
      },
      [&] {
        const Mat H = dec.step({3});
        do_not_optimize(next_token(model, &H(0, 0)));
        dec.truncate(T);
      },
      7);
  INFO("recompute / cached = " << ratio);
  CHECK(ratio >= 3.0);
}
