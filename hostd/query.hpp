// The query string of a request target (…/files?path=/data/x%20y.csv):
// percent-decoding and looking up one parameter. Apart from the router so
// the fuzz target (tests/fuzz/fuzz_query.cpp) can run it without hostd.
#pragma once

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vesicle::hostd {

// Percent-decodes a query string value ('+' is a space); std::nullopt for a
// '%' not followed by two hex digits.
std::optional<std::string> url_decode(std::string_view text);
// The decoded value of `name` in a query string, if present.
std::optional<std::string> query_param(std::string_view query, std::string_view name);

// Whether a request path's segments match `pattern`, segment by segment,
// where "*" matches any one segment (the routers' matcher).
bool path_is(const std::vector<std::string>& path, std::initializer_list<std::string_view> pattern);

} // namespace vesicle::hostd
