// How an Error reaches a REST client: the status and code come from its
// kind (common/error_kind.hpp's table), the message from its text.
#pragma once

#include <string>

#include "common/result.hpp"

namespace vesicle::hostd {

// The HTTP status an error is answered with.
unsigned http_status(const Error& error);

// {"error": {"code": ..., "message": ...}}
std::string error_body(const Error& error);

// One kind as a JSON object: kind, http_status, api_code, sdk_exception.
std::string error_table_row(const ErrorKindInfo& kind);

} // namespace vesicle::hostd
