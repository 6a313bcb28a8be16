#include "hostd/json.hpp"

#include <map>
#include <memory>
#include <mutex>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/type.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/type_resolver.h>
#include <google/protobuf/util/type_resolver_util.h>

namespace vesicle::hostd {

namespace {

namespace pb = google::protobuf;

constexpr const char* kTypeUrlPrefix = "type.googleapis.com";

// protobuf's JSON conversion describes each message type (and each nested
// one) to itself afresh on every call, from the descriptors: a third of
// what converting a small event costs (2.9 us against 2.1, measured), on
// every line of every exec. The descriptors of compiled-in messages never
// change, so each type is described once and copied from then on. Every
// message hostd converts is compiled in (messages/*.proto); another would
// not be found here and its conversion would fail with the reason.
class RememberedTypes final : public pb::util::TypeResolver {
public:
  RememberedTypes()
      : describe_(pb::util::NewTypeResolverForDescriptorPool(
            kTypeUrlPrefix, pb::DescriptorPool::generated_pool())) {}

  pb::util::Status ResolveMessageType(const std::string& type_url, pb::Type* type) override {
    return resolve(type_url, type, messages_,
                   [&](pb::Type* fresh) { return describe_->ResolveMessageType(type_url, fresh); });
  }
  pb::util::Status ResolveEnumType(const std::string& type_url, pb::Enum* type) override {
    return resolve(type_url, type, enums_,
                   [&](pb::Enum* fresh) { return describe_->ResolveEnumType(type_url, fresh); });
  }

private:
  template <class T, class Describe>
  pb::util::Status resolve(const std::string& type_url, T* type, std::map<std::string, T>& known,
                           Describe describe) {
    {
      std::lock_guard lock(mutex_);
      auto found = known.find(type_url);
      if (found != known.end()) {
        *type = found->second;
        return {};
      }
    }
    T fresh;
    auto status = describe(&fresh);
    if (!status.ok()) return status;
    *type = fresh;
    std::lock_guard lock(mutex_);
    known.emplace(type_url, std::move(fresh));
    return status;
  }

  std::unique_ptr<pb::util::TypeResolver> describe_;
  std::mutex mutex_;
  std::map<std::string, pb::Type> messages_;
  std::map<std::string, pb::Enum> enums_;
};

RememberedTypes& remembered_types() {
  static RememberedTypes types;
  return types;
}

std::string type_url(const pb::Message& message) {
  return std::string(kTypeUrlPrefix) + "/" + message.GetDescriptor()->full_name();
}

} // namespace

std::string to_json(const google::protobuf::Message& message) {
  pb::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  auto status = pb::util::BinaryToJsonString(&remembered_types(), type_url(message),
                                             message.SerializeAsString(), &out, options);
  // Only invalid UTF-8 in a string field can fail here (the encoders never
  // put any there), or a message that is not compiled in (hostd has none);
  // still, never send half a document.
  if (!status.ok())
    return R"({"error":{"code":"internal","message":"hostd could not encode its answer as JSON"}})";
  return out;
}

Result<void> from_json(std::string_view text, google::protobuf::Message& message) {
  pb::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  std::string binary;
  auto status =
      pb::util::JsonToBinaryString(&remembered_types(), type_url(message),
                                   pb::StringPiece(text.data(), text.size()), &binary, options);
  if (!status.ok())
    return make_error("parse JSON body", std::string(status.message()), message.GetTypeName());
  // As JsonStringToMessage does: the message is replaced, not merged into.
  if (!message.ParseFromString(binary))
    return make_error("parse JSON body", "the document does not fit the message",
                      message.GetTypeName());
  return {};
}

} // namespace vesicle::hostd
