#include "hostd/api_error.hpp"

#include "hostd/json.hpp"
#include "messages/api.pb.h"

namespace vesicle::hostd {

unsigned http_status(const Error& error) { return kind_info(error.kind).http_status; }

std::string error_body(const Error& error) {
  api::ErrorResponse body;
  body.mutable_error()->set_code(std::string(kind_info(error.kind).api_code));
  body.mutable_error()->set_message(error.message());
  return to_json(body);
}

std::string error_table_row(const ErrorKindInfo& kind) {
  // Names and codes are plain identifiers: no JSON escaping needed.
  return "{\"kind\": \"" + std::string(kind.name) + "\", \"http_status\": " +
         std::to_string(kind.http_status) + ", \"api_code\": \"" + std::string(kind.api_code) +
         "\", \"sdk_exception\": \"" + std::string(kind.sdk_exception) + "\"}";
}

} // namespace vesicle::hostd
