/// @file json.hpp
/// @brief Reading JSON files (Hugging Face `config.json`, safetensors headers) with errors that
/// name
///        the file and the field.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "mla/program.hpp"

namespace mla {

/// @addtogroup core
/// @{

/// Parse the JSON file at `path`; InputError if it cannot be read or is not well-formed JSON.
nlohmann::json load_json_file(const std::string& path);

/// Parse JSON text; InputError naming `origin` (a file name) if it is not well-formed.
nlohmann::json parse_json(const std::string& text, const std::string& origin);

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
