// Result<T>: a value or an Error that says what kind of failure it is,
// which operation failed, on what, and why. Syscall wrappers fill errno,
// operation and subject; callers add context with Error::with_context as the
// error travels up, and set the kind where they know what the failure means
// to a user (Error::of, with_kind). Nothing decides anything from the text.
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

#include "common/error_kind.hpp"

namespace vesicle {

struct Error {
  int errno_value = 0;   // 0 when the failure did not come from a syscall
  std::string operation; // "open", "connect", "boot VM"
  std::string subject;   // the path, address or argument it was about
  std::string detail;    // free text: what to do next, or what was seen
  std::string context;   // outermost first: "booting vm-1: starting QEMU"
  // What the failure means to a user; internal unless someone who knows
  // says otherwise.
  ErrorKind kind = ErrorKind::internal;

  // An error of `kind` with a message for people (what was wrong, what to
  // do) and the field, id or path it concerns.
  static Error of(ErrorKind kind, std::string message, std::string subject = {}) {
    Error error;
    error.kind = kind;
    error.detail = std::move(message);
    error.subject = std::move(subject);
    return error;
  }

  // "context: operation subject: strerror(errno): detail"; an error made by
  // Error::of (no operation) reads "context: detail".
  std::string message() const;

  Error with_kind(ErrorKind new_kind) && {
    kind = new_kind;
    return std::move(*this);
  }

  Error with_context(std::string outer) && {
    context = context.empty() ? std::move(outer) : std::move(outer) + ": " + context;
    return std::move(*this);
  }
  Error with_context(std::string outer) const& { return Error(*this).with_context(std::move(outer)); }
};

// An error from the errno left by a failed syscall.
inline Error sys_error(std::string operation, std::string subject = {}, int err = errno) {
  return Error{err, std::move(operation), std::move(subject), {}, {}};
}

inline Error make_error(std::string operation, std::string detail, std::string subject = {}) {
  return Error{0, std::move(operation), std::move(subject), std::move(detail), {}};
}

template <class T> class [[nodiscard]] Result {
public:
  Result(T value) : state_(std::in_place_index<0>, std::move(value)) {}
  Result(Error error) : state_(std::in_place_index<1>, std::move(error)) {}

  bool ok() const { return state_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(state_); }
  const T& value() const& { return std::get<0>(state_); }
  T&& value() && { return std::get<0>(std::move(state_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }

  const Error& error() const& { return std::get<1>(state_); }
  Error&& error() && { return std::get<1>(std::move(state_)); }

private:
  std::variant<T, Error> state_;
};

template <> class [[nodiscard]] Result<void> {
public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), failed_(true) {}

  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

private:
  Error error_;
  bool failed_ = false;
};

} // namespace vesicle
