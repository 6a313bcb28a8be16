#include "common/result.hpp"

#include <cstring>

namespace vesicle {

std::string Error::message() const {
  std::string text = context;
  auto add = [&text](const std::string& part, const char* separator) {
    if (part.empty()) return;
    if (!text.empty()) text += separator;
    text += part;
  };
  add(operation, ": ");
  // Error::of keeps the subject as a field: its message already names it.
  if (!subject.empty() && !(operation.empty() && !detail.empty()))
    text += operation.empty() ? subject : " " + subject;
  if (errno_value != 0) add(std::strerror(errno_value), ": ");
  add(detail, ": ");
  return text.empty() ? "unknown error" : text;
}

} // namespace vesicle
