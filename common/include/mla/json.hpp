/// @file json.hpp
/// @brief Reading JSON (Hugging Face `config.json`, safetensors headers and indexes) with errors
///        that name the file and the field. parse_json is the one way into nlohmann::json: every
///        reader of the project parses through it, so every malformed text gets the same error.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "mla/errors.hpp"

namespace mla {

/// @addtogroup loaders
/// @{

/// How parse_json reads a text.
struct JsonOptions {
  /// What the text is, for messages: "header" gives "<origin>: header is not well-formed JSON
  /// (...)"; empty gives "<origin>: not well-formed JSON (...)".
  std::string what;
  /// Refuse a key that appears twice in one object ("<origin>: <what> names 'k' twice").
  /// nlohmann keeps the last one silently; a header that names a tensor twice is corrupt, not a
  /// choice.
  bool unique_keys = false;
};

/// Parse JSON text. InputError naming `origin` (a file name) if it is not well-formed, including
/// a number too large for a double ("1e999"); nlohmann's own message is kept, cut to 200
/// characters (it quotes the token it choked on, which can be most of the text).
nlohmann::json parse_json(const std::string& text, const std::string& origin,
                          const JsonOptions& options = {});

/// The whole file at `path`, as bytes in a string; InputError "<path>: cannot open file".
std::string read_text_file(const std::string& path);

/// parse_json of the file at `path` (`path` is the origin).
nlohmann::json load_json_file(const std::string& path, const JsonOptions& options = {});

/// Field `key` of object `j`, converted to T. InputError "<origin>: field 'key' is missing" or
/// "... is not a <kind>" otherwise. Numbers must be integers when T is integral, and a size_t
/// field must not be negative.
template <class T>
T json_field(const nlohmann::json& j, const std::string& key, const std::string& origin);

/// Like json_field, but an absent field or a JSON null gives std::nullopt.
template <class T>
std::optional<T> json_optional(const nlohmann::json& j, const std::string& key,
                               const std::string& origin);

/// @}

}  // namespace mla
