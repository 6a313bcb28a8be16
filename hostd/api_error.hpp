// The errors the REST API answers with (api-contract.md, "Errors"): an HTTP
// status, a stable code, and a message that says what was wrong and what to
// do next.
#pragma once

#include <string>
#include <variant>

#include <caf/error.hpp>

namespace vesicle::hostd {

struct ApiError {
  unsigned status = 500;
  std::string code = "internal";
  std::string message;

  static ApiError invalid_argument(std::string message) {
    return {400, "invalid_argument", std::move(message)};
  }
  static ApiError unauthenticated(std::string message) {
    return {401, "unauthenticated", std::move(message)};
  }
  static ApiError not_found(std::string message) { return {404, "not_found", std::move(message)}; }
  static ApiError method_not_allowed(std::string message) {
    return {405, "method_not_allowed", std::move(message)};
  }
  static ApiError failed_precondition(std::string message) {
    return {409, "failed_precondition", std::move(message)};
  }
  static ApiError sandbox_died(std::string message) {
    return {410, "sandbox_died", std::move(message)};
  }
  static ApiError too_large(std::string message) { return {413, "too_large", std::move(message)}; }
  static ApiError quota_exceeded(std::string message) {
    return {429, "quota_exceeded", std::move(message)};
  }
  static ApiError no_capacity(std::string message) {
    return {503, "no_capacity", std::move(message)};
  }
  static ApiError space_corrupted(std::string message) {
    return {422, "space_corrupted", std::move(message)};
  }
  static ApiError internal(std::string message) { return {500, "internal", std::move(message)}; }
};

// An actor's typed error (messages/caf_types.hpp errc) or CAF's own (a
// timeout, a dead actor) as the API error it means.
ApiError api_error(const caf::error& error, caf::actor_system& system);

// {"error": {"code": ..., "message": ...}}
std::string error_body(const ApiError& error);

} // namespace vesicle::hostd

namespace vesicle::hostd {

// A value or the ApiError to answer with instead.
template <class T> class [[nodiscard]] ApiResult {
public:
  ApiResult(T value) : state_(std::in_place_index<0>, std::move(value)) {}
  ApiResult(ApiError error) : state_(std::in_place_index<1>, std::move(error)) {}
  bool ok() const { return state_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() { return std::get<0>(state_); }
  T& operator*() { return value(); }
  T* operator->() { return &value(); }
  const ApiError& error() const { return std::get<1>(state_); }

private:
  std::variant<T, ApiError> state_;
};

} // namespace vesicle::hostd
