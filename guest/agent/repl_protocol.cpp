#include "guest/agent/repl_protocol.hpp"

#include <cstdint>

#include "messages/display.hpp"

namespace vesicle::agent::repl_protocol {

namespace {

void put_u32(std::string& out, std::uint32_t value) {
  for (int i = 0; i < 4; ++i)
    out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

std::uint32_t get_u32(const std::string& in, std::size_t at) {
  std::uint32_t value = 0;
  for (int i = 0; i < 4; ++i) {
    value |= static_cast<std::uint32_t>(static_cast<unsigned char>(in[at + i])) << (8 * i);
  }
  return value;
}

} // namespace

std::string encode(const Fields& fields) {
  std::string body;
  for (const auto& [tag, value] : fields) {
    body.push_back(tag);
    put_u32(body, static_cast<std::uint32_t>(value.size()));
    body.append(value);
  }
  std::string message;
  message.reserve(4 + body.size());
  put_u32(message, static_cast<std::uint32_t>(body.size()));
  message.append(body);
  return message;
}

Result<std::optional<Fields>> take(std::string& buffer, std::size_t max_body) {
  if (buffer.size() < 4) return std::optional<Fields>{};
  const std::size_t length = get_u32(buffer, 0);
  if (length > max_body) {
    return make_error("decode REPL message", "body of " + std::to_string(length) +
                                                 " bytes exceeds the limit of " +
                                                 std::to_string(max_body));
  }
  if (buffer.size() < 4 + length) return std::optional<Fields>{};
  Fields fields;
  std::size_t at = 4;
  const std::size_t end = 4 + length;
  while (at < end) {
    if (end - at < 5) return make_error("decode REPL message", "truncated field header");
    const char tag = buffer[at];
    const std::size_t size = get_u32(buffer, at + 1);
    at += 5;
    if (size > end - at) return make_error("decode REPL message", "field runs past the message");
    fields.emplace_back(tag, buffer.substr(at, size));
    at += size;
  }
  buffer.erase(0, end);
  return std::optional<Fields>{std::move(fields)};
}

const std::string* find(const Fields& fields, char tag) {
  for (const auto& [t, value] : fields) {
    if (t == tag) return &value;
  }
  return nullptr;
}

Result<guest::Display> display_of(const Fields& fields) {
  guest::Display display;
  const std::string* mime = nullptr;
  std::size_t bytes = 0;
  for (const auto& [tag, value] : fields) {
    if (tag == 'p') {
      display.set_main_result(value == "1");
    } else if (tag == 'm') {
      if (!display::valid_mime_type(value))
        return make_error("read a display output",
                          "its MIME type is not type/subtype: \"" + value.substr(0, 100) + "\"");
      if (display.data().contains(value))
        return make_error("read a display output", "it has " + value + " twice");
      mime = &value;
    } else if (tag == 'd') {
      if (mime == nullptr) return make_error("read a display output", "data without a MIME type");
      bytes += display::entry_bytes(*mime, value);
      if (bytes > display::kMaxBundleBytes)
        return make_error("read a display output", "it is over the limit of " +
                                                       std::to_string(display::kMaxBundleBytes) +
                                                       " bytes");
      (*display.mutable_data())[*mime] = value;
      mime = nullptr;
    }
  }
  if (mime != nullptr) return make_error("read a display output", *mime + " has no data");
  return display;
}

} // namespace vesicle::agent::repl_protocol
