#include "guest/agent/repl_protocol.hpp"

#include <cstdint>

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

} // namespace vesicle::agent::repl_protocol
