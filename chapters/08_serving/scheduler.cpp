#include "08_serving/scheduler.hpp"

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>
#include <stdexcept>

#include <fmt/format.h>

#include "mla/errors.hpp"

namespace mla::ch08 {

namespace {

using Clock = std::chrono::steady_clock;

/// A request in flight.
struct Live {
  std::size_t index = 0;
  std::vector<int> known;  // prompt + generated: what the cache must hold (but the last token)
  std::size_t prompt = 0;
  std::unique_ptr<PagedSequence> seq;
  std::unique_ptr<Sampler> sampler;
  Clock::time_point start;
  bool admitted_once = false;
};

}  // namespace

Scheduler::Scheduler(Engine& engine, BlockPool& pool, SchedulerOptions opt)
    : engine_(&engine), pool_(&pool), opt_(opt) {
  if (opt_.max_batch == 0 || opt_.prefill_chunk == 0) {
    throw std::invalid_argument("Scheduler: max_batch and prefill_chunk must be positive");
  }
}

std::vector<Completion> Scheduler::run(const std::vector<Request>& requests,
                                       const std::function<void(std::size_t, int)>& on_token) {
  const ModelConfig& cfg = engine_->model().config;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const Request& r = requests[i];
    if (r.prompt.empty()) throw InputError(fmt::format("request {}: empty prompt", i + 1));
    if (r.prompt.size() + r.max_new > cfg.max_position_embeddings) {
      throw InputError(fmt::format(
          "request {}: prompt of {} tokens + {} new exceeds the model's context of {} tokens",
          i + 1, r.prompt.size(), r.max_new, cfg.max_position_embeddings));
    }
    if (PagedSequence::blocks_for(r.prompt.size() + r.max_new) > pool_->capacity()) {
      throw InputError(fmt::format(
          "request {}: {} tokens need {} blocks of {}, the KV budget holds {}", i + 1,
          r.prompt.size() + r.max_new, PagedSequence::blocks_for(r.prompt.size() + r.max_new),
          kBlockTokens, pool_->capacity()));
    }
    r.sampling.check();
  }
  stats_ = {};
  const auto t0 = Clock::now();
  std::vector<Completion> out(requests.size());
  std::vector<std::size_t> order(requests.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return requests[a].arrival < requests[b].arrival;
  });
  std::size_t next = 0, done = 0;
  std::deque<std::unique_ptr<Live>> waiting;
  std::vector<std::unique_ptr<Live>> running;  // admission order: the back is preempted first

  const auto preempt = [&](std::unique_ptr<Live> v) {
    v->seq->release();  // freed now, recomputed from v->known when admitted again
    ++out[v->index].preemptions;
    ++stats_.preemptions;
    waiting.push_front(std::move(v));
  };

  for (std::size_t step = 0; done < requests.size(); ++step) {
    while (next < order.size() && requests[order[next]].arrival <= step) {
      const std::size_t i = order[next++];
      auto v = std::make_unique<Live>();
      v->index = i;
      v->known = requests[i].prompt;
      v->prompt = v->known.size();
      v->seq = std::make_unique<PagedSequence>(*pool_, engine_->layout(), cfg);
      v->sampler = std::make_unique<Sampler>(requests[i].sampling);
      waiting.push_back(std::move(v));
    }
    // Admit from the front while the pool has room for the first chunk and one block to grow.
    while (!waiting.empty() && running.size() < opt_.max_batch) {
      Live& v = *waiting.front();
      const std::size_t first = std::min(opt_.prefill_chunk, v.known.size());
      if (pool_->free_blocks() < PagedSequence::blocks_for(first) + (running.empty() ? 0 : 1)) {
        break;
      }
      if (!v.admitted_once) {
        v.admitted_once = true;
        v.start = Clock::now();
        out[v.index].admitted_step = step;
      }
      running.push_back(std::move(waiting.front()));
      waiting.pop_front();
    }
    if (running.empty()) continue;  // nothing admitted yet: wait for arrivals

    // Each running sequence's share: the tokens its cache lacks (a prompt chunk, or the last
    // generated token). Room first; when the pool is out, preempt the newest.
    std::vector<StepItem> items;
    std::vector<Live*> fed;
    for (std::size_t k = 0; k < running.size(); ++k) {
      Live& v = *running[k];
      const std::size_t have = v.seq->length();
      const std::size_t n = std::min(opt_.prefill_chunk, v.known.size() - have);
      while (!v.seq->reserve(have + n)) {
        if (running.size() - 1 == k) break;  // nothing newer to preempt
        preempt(std::move(running.back()));
        running.pop_back();
      }
      if (!v.seq->reserve(have + n)) {
        // v itself is the newest: free it too, unless it is alone (then it fits by the check
        // above, since every older one has been freed).
        preempt(std::move(running[k]));
        running.erase(running.begin() + long(k));
        break;
      }
      items.push_back(
          {v.seq.get(), {v.known.begin() + long(have), v.known.begin() + long(have + n)}});
      fed.push_back(&v);
    }
    stats_.max_used_blocks = std::max(stats_.max_used_blocks, pool_->used_blocks());
    stats_.max_running = std::max(stats_.max_running, items.size());
    if (items.empty()) continue;
    const Mat logits = engine_->step(items);
    ++stats_.steps;

    const std::size_t V = cfg.vocab_size;
    for (std::size_t k = 0; k < fed.size(); ++k) {
      Live& v = *fed[k];
      if (v.seq->length() < v.known.size()) continue;  // prefill goes on next step
      Completion& c = out[v.index];
      // A recomputed sequence re-feeds its generated tokens: only a token beyond them is new.
      const int t = v.sampler->sample(logits.data() + k * V, V);
      c.tokens.push_back(t);
      v.known.push_back(t);
      ++stats_.tokens_generated;
      if (on_token) on_token(v.index, t);
      const bool eos = cfg.eos_token_id && std::size_t(t) == *cfg.eos_token_id;
      if (eos || c.tokens.size() >= requests[v.index].max_new) {
        c.finished_step = step;
        c.seconds = std::chrono::duration<double>(Clock::now() - v.start).count();
        v.seq->release();
        ++done;
        v.seq.reset();
      }
    }
    running.erase(std::remove_if(running.begin(), running.end(),
                                 [](const std::unique_ptr<Live>& v) { return !v->seq; }),
                  running.end());
  }
  stats_.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return out;
}

}  // namespace mla::ch08
