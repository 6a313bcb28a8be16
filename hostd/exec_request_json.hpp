// Reading an exec request's body. Nearly every body is a flat object of the
// request's own fields ({"code": "...", "language": "python"}), and
// protobuf's JSON parser (hostd/json.hpp) costs more of hostd's CPU for it
// than the rest of the request's parsing: such a body is read directly.
// Anything else (another spelling, a null, a number as a string, an escaped
// surrogate, a mistake) goes to protobuf's parser, which decides, and whose
// error names what was wrong.
#pragma once

#include <optional>
#include <string_view>

#include "common/result.hpp"
#include "messages/api.pb.h"

namespace vesicle::hostd {

// The request, or its parse error (as from_json gives it).
Result<void> parse_exec_request(std::string_view body, api::ExecRequest& request);

// The request when `body` has the plain shape read directly; nullopt when
// protobuf's parser has to decide. Exposed for the test that checks both
// ways agree.
std::optional<api::ExecRequest> plain_exec_request(std::string_view body);

} // namespace vesicle::hostd
