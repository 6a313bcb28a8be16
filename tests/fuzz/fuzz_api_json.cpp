// The REST API's request bodies (hostd/json.cpp: protobuf's JSON mapping
// into messages/api.proto) over what a client POSTs. The first byte picks
// the request type. A body that parses prints back as JSON hostd can send,
// and that JSON parses to the same message.
#include <memory>
#include <string>
#include <string_view>

#include <google/protobuf/util/message_differencer.h>

#include "hostd/json.hpp"
#include "messages/api.pb.h"
#include "tests/fuzz/fuzz_check.hpp"

namespace {

std::unique_ptr<google::protobuf::Message> request_of(std::uint8_t pick) {
  switch (pick % 4) {
  case 0:
    return std::make_unique<vesicle::api::CreateSandboxRequest>();
  case 1:
    return std::make_unique<vesicle::api::ExecRequest>();
  case 2:
    return std::make_unique<vesicle::api::ForkRequest>();
  default:
    return std::make_unique<vesicle::api::ResumeRequest>();
  }
}

} // namespace

extern "C" int VESICLE_FUZZ_ENTRY(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  auto request = request_of(data[0]);
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  if (!vesicle::hostd::from_json(body, *request)) return 0;
  const std::string printed = vesicle::hostd::to_json(*request);
  FUZZ_CHECK(printed.rfind(R"({"error":{"code":"internal")", 0) != 0); // to_json's fallback
  auto again = request_of(data[0]);
  FUZZ_CHECK(vesicle::hostd::from_json(printed, *again));
  FUZZ_CHECK(google::protobuf::util::MessageDifferencer::Equals(*again, *request));
  return 0;
}
