#include "common/error_kind.hpp"

#include <array>

namespace vesicle {

namespace {

// The one table. API codes are the REST API's since its first version
// (README, "The REST API"); a kind added later gets its own.
constexpr std::array<ErrorKindInfo, 15> kKinds{{
    {ErrorKind::invalid_argument, "invalid_argument", "invalid_argument", 400,
     "InvalidRequestError"},
    {ErrorKind::unauthenticated, "unauthenticated", "unauthenticated", 401, "AuthenticationError"},
    {ErrorKind::not_found, "not_found", "not_found", 404, "NotFoundError"},
    {ErrorKind::method_not_allowed, "method_not_allowed", "method_not_allowed", 405,
     "MethodNotAllowedError"},
    {ErrorKind::conflict, "conflict", "failed_precondition", 409, "ConflictError"},
    {ErrorKind::guest_died, "guest_died", "sandbox_died", 410, "SandboxDiedError"},
    {ErrorKind::too_large, "too_large", "too_large", 413, "PayloadTooLargeError"},
    {ErrorKind::corrupted, "corrupted", "space_corrupted", 422, "SpaceCorruptedError"},
    {ErrorKind::quota, "quota", "quota_exceeded", 429, "QuotaExceededError"},
    {ErrorKind::capacity, "capacity", "no_capacity", 503, "CapacityError"},
    {ErrorKind::unavailable, "unavailable", "unavailable", 503, "UnavailableError"},
    {ErrorKind::timeout, "timeout", "timeout", 504, "DeadlineExceededError"},
    {ErrorKind::internal, "internal", "internal", 500, "ServerError"},
    // 410 like sandbox_died (the sandbox is ended), so SDKs that map by
    // status raise SandboxDiedError; the code says why.
    {ErrorKind::guest_protocol_violation, "guest_protocol_violation", "guest_protocol_violation",
     410, "SandboxDiedError"},
    {ErrorKind::forbidden, "forbidden", "forbidden", 403, "PermissionDeniedError"},
}};

constexpr bool table_in_enum_order() {
  for (std::size_t i = 0; i < kKinds.size(); ++i)
    if (static_cast<std::size_t>(kKinds[i].kind) != i + 1) return false;
  return true;
}
static_assert(table_in_enum_order(), "kKinds must list every ErrorKind in enum order");

} // namespace

std::span<const ErrorKindInfo> error_kinds() {
  return kKinds;
}

const ErrorKindInfo& kind_info(ErrorKind kind) {
  auto index = static_cast<std::size_t>(kind);
  if (index == 0 || index > kKinds.size())
    return kKinds[static_cast<std::size_t>(ErrorKind::internal) - 1];
  return kKinds[index - 1];
}

std::optional<ErrorKind> error_kind_from_code(std::uint8_t code) {
  if (code == 0 || code > kKinds.size()) return std::nullopt;
  return static_cast<ErrorKind>(code);
}

} // namespace vesicle
