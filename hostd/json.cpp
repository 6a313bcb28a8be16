#include "hostd/json.hpp"

#include <google/protobuf/util/json_util.h>

namespace vesicle::hostd {

std::string to_json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  auto status = google::protobuf::util::MessageToJsonString(message, &out, options);
  // Only invalid UTF-8 in a string field can fail here, and the encoders
  // never put any there; still, never send half a document.
  if (!status.ok())
    return R"({"error":{"code":"internal","message":"hostd could not encode its answer as JSON"}})";
  return out;
}

Result<void> from_json(std::string_view text, google::protobuf::Message& message) {
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(text.data(), text.size()), &message, options);
  if (!status.ok())
    return make_error("parse JSON body", std::string(status.message()), message.GetTypeName());
  return {};
}

} // namespace vesicle::hostd
