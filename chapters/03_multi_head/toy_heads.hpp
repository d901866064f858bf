/// @file toy_heads.hpp
/// @brief Chapter 3: two hand-made heads on chapter 1's sentence, which look at different things.
#pragma once

#include <string>
#include <vector>

#include "03_multi_head/multi_head.hpp"

namespace mla::ch03 {

/// @addtogroup ch03
/// @{

/// Two hand-made heads over chapter 1's toy features (ch01::toy_embeddings), so that what each
/// head attends to can be read off its weights, as in chapter 1:
///
/// - head 0, the **noun head** ("which thing is this about?"): "flag" looks for its adjective
///   ("American"), "American" for its article, and every later word (verb, colour, comma,
///   conjunction) for the noun;
/// - head 1, the **list head** ("what came before me in the phrase?"): "flag" looks for its
///   article ("The"), a colour, a comma and "and" look for the colours listed so far; "The",
///   "American" and "is" look for nothing and spread their weight evenly.
///
/// d_model = head_dim = 7 (the toy features), two query heads with their own key/value heads
/// (MHA). Keys and values are the features themselves in both heads (W_k, W_v: two stacked
/// identities), so a head output says which features it gathered; W_o = [I I] adds the two.
/// A query entry gives a scaled score q·k/√d_h of 3 for a key with the sought feature, as in
/// chapter 1: e³ ≈ 20 times the weight of a key without it.
MhaWeights toy_heads();

/// What each head of toy_heads() looks for, in the words of the README: {"noun", "list"}.
const std::vector<std::string>& toy_head_names();

/// @}

}  // namespace mla::ch03
