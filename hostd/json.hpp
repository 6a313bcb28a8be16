// JSON through protobuf's JSON mapping (api-contract.md: snake_case names,
// primitive fields always printed, unknown fields refused).
#pragma once

#include <string>
#include <string_view>

#include <google/protobuf/message.h>

#include "common/result.hpp"

namespace vesicle::hostd {

std::string to_json(const google::protobuf::Message& message);

// Parses a request body into `message`. The Error's detail is the parser's
// complaint, which names the offending field ("Cannot find field: vcpu",
// "(vcpus): invalid value \"two\" for type TYPE_UINT32").
Result<void> from_json(std::string_view text, google::protobuf::Message& message);

} // namespace vesicle::hostd
