// The parts of a request both routers (api.cpp, gateway_api.cpp) read
// before they route it: the target's path segments and the bearer key.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vesicle::hostd {

// The non-empty segments of a request path ("/v1//sandboxes/" gives "v1",
// "sandboxes").
std::vector<std::string> split_path(std::string_view path);

// The key in "Authorization: Bearer <key>", if the header has that form.
std::optional<std::string_view> bearer_key(std::string_view header);

} // namespace vesicle::hostd
