// The error kinds' contract with users: each kind's HTTP status, REST code
// and SDK exception, written out here independently of the table in
// common/error_kind.cpp, and the kind surviving the trip between actors.
#include <gtest/gtest.h>

#include <set>

#include "common/error_kind.hpp"
#include "common/result.hpp"
#include "hostd/api_error.hpp"
#include "messages/caf_types.hpp"

namespace vesicle {
namespace {

struct Expected {
  ErrorKind kind;
  unsigned status;
  const char* code;
  const char* sdk_exception;
};

// README, "The REST API", and sdk/python/vesicle/errors.py.
const Expected kContract[] = {
    {ErrorKind::invalid_argument, 400, "invalid_argument", "InvalidRequestError"},
    {ErrorKind::unauthenticated, 401, "unauthenticated", "AuthenticationError"},
    {ErrorKind::not_found, 404, "not_found", "NotFoundError"},
    {ErrorKind::method_not_allowed, 405, "method_not_allowed", "MethodNotAllowedError"},
    {ErrorKind::conflict, 409, "failed_precondition", "ConflictError"},
    {ErrorKind::guest_died, 410, "sandbox_died", "SandboxDiedError"},
    {ErrorKind::too_large, 413, "too_large", "PayloadTooLargeError"},
    {ErrorKind::corrupted, 422, "space_corrupted", "SpaceCorruptedError"},
    {ErrorKind::quota, 429, "quota_exceeded", "QuotaExceededError"},
    {ErrorKind::capacity, 503, "no_capacity", "CapacityError"},
    {ErrorKind::unavailable, 503, "unavailable", "UnavailableError"},
    {ErrorKind::timeout, 504, "timeout", "DeadlineExceededError"},
    {ErrorKind::internal, 500, "internal", "ServerError"},
    {ErrorKind::guest_protocol_violation, 410, "guest_protocol_violation", "SandboxDiedError"},
    {ErrorKind::forbidden, 403, "forbidden", "PermissionDeniedError"},
};

TEST(ErrorKind, EveryKindHasItsStatusCodeAndSdkException) {
  ASSERT_EQ(error_kinds().size(), std::size(kContract));
  for (const auto& want : kContract) {
    const auto& info = kind_info(want.kind);
    SCOPED_TRACE(std::string(info.name));
    EXPECT_EQ(info.kind, want.kind);
    EXPECT_EQ(info.http_status, want.status);
    EXPECT_EQ(info.api_code, want.code);
    EXPECT_EQ(info.sdk_exception, want.sdk_exception);
    auto error = Error::of(want.kind, "what went wrong", "sb-1");
    EXPECT_EQ(hostd::http_status(error), want.status);
    EXPECT_EQ(hostd::error_body(error), std::string(R"({"error":{"code":")") + want.code +
                                            R"(","message":"what went wrong"}})");
  }
}

TEST(ErrorKind, NamesAreUniqueMetricLabels) {
  std::set<std::string_view> names;
  for (const auto& info : error_kinds())
    EXPECT_TRUE(names.insert(info.name).second) << info.name;
}

TEST(ErrorKind, TheKindCrossesTheActorBoundary) {
  for (const auto& want : kContract) {
    auto error = Error::of(want.kind, "no sandbox sb-1 for this key", "sb-1");
    auto back = to_error(to_caf_error(error));
    EXPECT_EQ(back.kind, want.kind);
    EXPECT_EQ(back.message(), "no sandbox sb-1 for this key");
  }
}

TEST(ErrorKind, CafsOwnErrorsAreInternal) {
  auto back = to_error(caf::make_error(caf::sec::request_timeout));
  EXPECT_EQ(back.kind, ErrorKind::internal);
  EXPECT_NE(back.message().find("did not answer"), std::string::npos) << back.message();
}

TEST(ErrorKind, UnknownCodesAreNoKind) {
  EXPECT_FALSE(error_kind_from_code(0));
  EXPECT_FALSE(error_kind_from_code(200));
  EXPECT_EQ(kind_info(static_cast<ErrorKind>(0)).kind, ErrorKind::internal);
}

TEST(ErrorKind, ContextAndKindTravelTogether) {
  auto error = Error::of(ErrorKind::capacity, "every slot is in use").with_context("creating sb-2");
  EXPECT_EQ(error.kind, ErrorKind::capacity);
  EXPECT_EQ(error.message(), "creating sb-2: every slot is in use");
  auto sys = sys_error("open", "/x", ENOENT);
  EXPECT_EQ(sys.kind, ErrorKind::internal);
  EXPECT_EQ(std::move(sys).with_kind(ErrorKind::not_found).kind, ErrorKind::not_found);
}

} // namespace
} // namespace vesicle
