#include "hostd/e2b_multipart.hpp"

#include <algorithm>
#include <cctype>

namespace vesicle::hostd::e2b {

namespace {

// A part's headers are a few hundred bytes; more is not a form upload.
constexpr std::size_t kMaxHeaderBytes = 16 * 1024;

bool iequal_prefix(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(text[i])) !=
        std::tolower(static_cast<unsigned char>(prefix[i])))
      return false;
  return true;
}

// The value of `key`="..." (or unquoted) in a header's parameters.
std::string parameter(std::string_view header, std::string_view key) {
  std::size_t at = 0;
  while ((at = header.find(key, at)) != std::string_view::npos) {
    const bool starts = at == 0 || header[at - 1] == ' ' || header[at - 1] == ';';
    const auto after = at + key.size();
    if (starts && after < header.size() && header[after] == '=') {
      auto value = header.substr(after + 1);
      if (!value.empty() && value.front() == '"') {
        std::string out;
        for (std::size_t i = 1; i < value.size() && value[i] != '"'; ++i) {
          if (value[i] == '\\' && i + 1 < value.size()) ++i;
          out += value[i];
        }
        return out;
      }
      return std::string(value.substr(0, value.find(';')));
    }
    at = after;
  }
  return {};
}

} // namespace

std::optional<std::string> multipart_boundary(std::string_view content_type) {
  if (!iequal_prefix(content_type, "multipart/form-data")) return std::nullopt;
  auto boundary = parameter(content_type, "boundary");
  if (boundary.empty() || boundary.size() > 200) return std::nullopt;
  return boundary;
}

MultipartReader::MultipartReader(std::string boundary) : delimiter_("\r\n--" + boundary) {
  // The first boundary has no CRLF before it: pretend it had.
  buffer_ = "\r\n";
}

Result<std::vector<MultipartReader::Step>> MultipartReader::feed(std::string_view piece) {
  std::vector<Step> steps;
  buffer_.append(piece);
  for (;;) {
    switch (state_) {
    case State::preamble: {
      auto at = buffer_.find(delimiter_);
      if (at == std::string::npos) {
        // Keep what could be the start of the delimiter.
        if (buffer_.size() > delimiter_.size())
          buffer_.erase(0, buffer_.size() - delimiter_.size());
        return steps;
      }
      buffer_.erase(0, at + delimiter_.size());
      state_ = State::after_boundary;
      break;
    }
    case State::after_boundary:
      if (buffer_.size() < 2) return steps;
      if (buffer_.compare(0, 2, "--") == 0) {
        state_ = State::done;
        buffer_.clear();
        return steps;
      }
      if (buffer_.compare(0, 2, "\r\n") != 0)
        return Error::of(ErrorKind::invalid_argument,
                         "multipart body: a boundary is followed by neither CRLF nor \"--\"");
      buffer_.erase(0, 2);
      state_ = State::headers;
      break;
    case State::headers: {
      auto end = buffer_.find("\r\n\r\n");
      if (end == std::string::npos) {
        if (buffer_.size() > kMaxHeaderBytes)
          return Error::of(ErrorKind::invalid_argument,
                           "multipart body: a part's headers exceed 16 KiB");
        return steps;
      }
      Step begin{Step::Kind::begin, {}, {}, {}};
      std::string_view headers(buffer_.data(), end);
      std::size_t start = 0;
      while (start <= headers.size()) {
        auto eol = headers.find("\r\n", start);
        if (eol == std::string_view::npos) eol = headers.size();
        auto line = headers.substr(start, eol - start);
        if (iequal_prefix(line, "content-disposition:")) {
          begin.name = parameter(line, "name");
          begin.filename = parameter(line, "filename");
        }
        start = eol + 2;
      }
      steps.push_back(std::move(begin));
      buffer_.erase(0, end + 4);
      state_ = State::body;
      break;
    }
    case State::body: {
      auto at = buffer_.find(delimiter_);
      if (at == std::string::npos) {
        // All but a possible delimiter start goes out now.
        if (buffer_.size() >= delimiter_.size()) {
          const auto safe = buffer_.size() - (delimiter_.size() - 1);
          steps.push_back({Step::Kind::data, {}, {}, buffer_.substr(0, safe)});
          buffer_.erase(0, safe);
        }
        return steps;
      }
      if (at > 0) steps.push_back({Step::Kind::data, {}, {}, buffer_.substr(0, at)});
      steps.push_back({Step::Kind::end, {}, {}, {}});
      buffer_.erase(0, at + delimiter_.size());
      state_ = State::after_boundary;
      break;
    }
    case State::done:
      buffer_.clear(); // the epilogue is ignored
      return steps;
    }
  }
}

} // namespace vesicle::hostd::e2b
