#include "hostd/api_error.hpp"

#include <caf/actor_system.hpp>

#include "hostd/json.hpp"
#include "messages/api.pb.h"
#include "messages/caf_types.hpp"

namespace vesicle::hostd {

ApiError api_error(const caf::error& error, caf::actor_system& system) {
  if (error.category() != kErrorCategory)
    return ApiError::internal("hostd's actors did not answer (" + system.render(error) +
                              "); retry, and report it if it persists");
  auto message = error_message(error);
  switch (static_cast<errc>(error.code())) {
  case errc::invalid_argument:
    return ApiError::invalid_argument(message);
  case errc::not_found:
    return ApiError::not_found(message);
  case errc::failed_precondition:
    return ApiError::failed_precondition(message);
  case errc::sandbox_died:
    return ApiError::sandbox_died(message);
  case errc::no_capacity:
    return ApiError::no_capacity(message);
  case errc::shutting_down:
    return {503, "no_capacity", message};
  case errc::boot_failed:
    return ApiError::internal(message);
  case errc::internal:
    return ApiError::internal(message);
  case errc::quota_exceeded:
    return ApiError::quota_exceeded(message);
  case errc::space_corrupted:
    return ApiError::space_corrupted(message);
  }
  return ApiError::internal(system.render(error));
}

std::string error_body(const ApiError& error) {
  api::ErrorResponse body;
  body.mutable_error()->set_code(error.code);
  body.mutable_error()->set_message(error.message);
  return to_json(body);
}

} // namespace vesicle::hostd
