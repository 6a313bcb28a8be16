#include "vmm/json.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>

#include "common/escape.hpp"

namespace vesicle::json {

namespace {

const Value kNull;
const std::string kEmptyString;
const Array kEmptyArray;
const Object kEmptyObject;

constexpr int kMaxDepth = 64;

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

class Parser {
public:
  Parser(std::string_view text, DuplicateNames duplicates) : text_(text), duplicates_(duplicates) {}

  Result<Value> document() {
    auto value = parse_value(0);
    if (!value) return value;
    skip_space();
    if (pos_ != text_.size()) return fail("trailing characters after the value");
    return value;
  }

private:
  Error fail(const std::string& what) const {
    return make_error("parse JSON", what + " at offset " + std::to_string(pos_));
  }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool consume(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  Result<Value> parse_value(int depth) {
    if (depth > kMaxDepth) return fail("nesting deeper than " + std::to_string(kMaxDepth));
    skip_space();
    if (pos_ >= text_.size()) return fail("unexpected end of input");
    const char c = text_[pos_];
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    if (c == '"') {
      auto s = parse_string();
      if (!s) return std::move(s).error();
      return Value(std::move(s.value()));
    }
    if (consume("true")) return Value(true);
    if (consume("false")) return Value(false);
    if (consume("null")) return Value(nullptr);
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
    return fail(std::string("unexpected character '") + c + "'");
  }

  Result<Value> parse_object(int depth) {
    ++pos_; // {
    Object object;
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      return Value(std::move(object));
    }
    for (;;) {
      skip_space();
      if (pos_ >= text_.size() || text_[pos_] != '"') return fail("expected a member name");
      auto key = parse_string();
      if (!key) return std::move(key).error();
      skip_space();
      if (pos_ >= text_.size() || text_[pos_] != ':') return fail("expected ':'");
      ++pos_;
      auto value = parse_value(depth + 1);
      if (!value) return value;
      if (duplicates_ == DuplicateNames::refuse && object.contains(key.value()))
        return fail("the member name \"" + key.value() + "\" given twice");
      object.insert_or_assign(std::move(key.value()), std::move(value.value()));
      skip_space();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == '}') {
        ++pos_;
        return Value(std::move(object));
      }
      return fail("expected ',' or '}'");
    }
  }

  Result<Value> parse_array(int depth) {
    ++pos_; // [
    Array array;
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      return Value(std::move(array));
    }
    for (;;) {
      auto value = parse_value(depth + 1);
      if (!value) return value;
      array.push_back(std::move(value.value()));
      skip_space();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == ']') {
        ++pos_;
        return Value(std::move(array));
      }
      return fail("expected ',' or ']'");
    }
  }

  Result<std::uint32_t> parse_hex4() {
    if (pos_ + 4 > text_.size()) return fail("truncated \\u escape");
    std::uint32_t cp = 0;
    auto [end, ec] = std::from_chars(text_.data() + pos_, text_.data() + pos_ + 4, cp, 16);
    if (ec != std::errc{} || end != text_.data() + pos_ + 4) return fail("bad \\u escape");
    pos_ += 4;
    return cp;
  }

  Result<std::string> parse_string() {
    ++pos_; // "
    std::string out;
    while (pos_ < text_.size()) {
      const char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) return fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) break;
      const char e = text_[pos_++];
      switch (e) {
      case '"':
        out += '"';
        break;
      case '\\':
        out += '\\';
        break;
      case '/':
        out += '/';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'u': {
        auto cp = parse_hex4();
        if (!cp) return std::move(cp).error();
        std::uint32_t code = cp.value();
        if (code >= 0xd800 && code < 0xdc00 && consume("\\u")) {
          auto low = parse_hex4();
          if (!low) return std::move(low).error();
          if (low.value() >= 0xdc00 && low.value() < 0xe000) {
            code = 0x10000 + ((code - 0xd800) << 10) + (low.value() - 0xdc00);
          } else {
            append_utf8(out, 0xfffd);
            code = low.value();
          }
        }
        // A lone surrogate has no UTF-8 form.
        if (code >= 0xd800 && code < 0xe000) code = 0xfffd;
        append_utf8(out, code);
        break;
      }
      default:
        return fail(std::string("bad escape '\\") + e + "'");
      }
    }
    return fail("unterminated string");
  }

  Result<Value> parse_number() {
    const std::size_t start = pos_;
    if (text_[pos_] == '-') ++pos_;
    // RFC 8259: no leading zeros ("01" is not JSON; other readers, such as
    // protobuf's, refuse it).
    if (pos_ + 1 < text_.size() && text_[pos_] == '0' && text_[pos_ + 1] >= '0' &&
        text_[pos_ + 1] <= '9')
      return fail("a number with a leading zero");
    bool integral = true;
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c >= '0' && c <= '9') {
        ++pos_;
      } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
        integral = false;
        ++pos_;
      } else {
        break;
      }
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    if (integral) {
      std::int64_t i = 0;
      auto [end, ec] = std::from_chars(first, last, i);
      if (ec == std::errc{} && end == last) return Value(i);
    }
    double d = 0;
    auto [end, ec] = std::from_chars(first, last, d);
    if (ec != std::errc{} || end != last) {
      pos_ = start;
      return fail("bad number");
    }
    return Value(d);
  }

  std::string_view text_;
  DuplicateNames duplicates_;
  std::size_t pos_ = 0;
};

void dump_string(std::string& out, const std::string& s) {
  out += '"';
  append_escaped(out, s, true, ControlEscape::json);
  out += '"';
}

void dump_value(std::string& out, const Value& value) {
  if (value.is_null()) {
    out += "null";
  } else if (value.is_bool()) {
    out += value.as_bool() ? "true" : "false";
  } else if (value.is_int()) {
    out += std::to_string(value.as_int());
  } else if (value.is_number()) {
    const double d = value.as_double();
    if (!std::isfinite(d)) {
      out += "null";
    } else {
      char buffer[32];
      auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, d);
      out.append(buffer, end);
    }
  } else if (value.is_string()) {
    dump_string(out, value.as_string());
  } else if (value.is_array()) {
    out += '[';
    bool first = true;
    for (const auto& item : value.as_array()) {
      if (!first) out += ',';
      first = false;
      dump_value(out, item);
    }
    out += ']';
  } else {
    out += '{';
    bool first = true;
    for (const auto& [key, item] : value.as_object()) {
      if (!first) out += ',';
      first = false;
      dump_string(out, key);
      out += ':';
      dump_value(out, item);
    }
    out += '}';
  }
}

} // namespace

bool Value::as_bool(bool fallback) const {
  const bool* b = std::get_if<bool>(&v_);
  return b ? *b : fallback;
}

std::int64_t Value::as_int(std::int64_t fallback) const {
  if (const auto* i = std::get_if<std::int64_t>(&v_)) return *i;
  if (const auto* d = std::get_if<double>(&v_)) {
    // Converting a double outside int64's range (1e300, from a hostile
    // client's MCP arguments or QMP reply) is undefined behaviour: such a
    // number, like NaN, gets the fallback. Found by tests/fuzz/fuzz_json.
    constexpr double kLimit = 9223372036854775808.0; // 2^63
    if (!(*d >= -kLimit && *d < kLimit)) return fallback;
    return static_cast<std::int64_t>(*d);
  }
  return fallback;
}

double Value::as_double(double fallback) const {
  if (const auto* d = std::get_if<double>(&v_)) return *d;
  if (const auto* i = std::get_if<std::int64_t>(&v_)) return static_cast<double>(*i);
  return fallback;
}

const std::string& Value::as_string() const {
  const auto* s = std::get_if<std::string>(&v_);
  return s ? *s : kEmptyString;
}

const Array& Value::as_array() const {
  const auto* a = std::get_if<Array>(&v_);
  return a ? *a : kEmptyArray;
}

const Object& Value::as_object() const {
  const auto* o = std::get_if<Object>(&v_);
  return o ? *o : kEmptyObject;
}

const Value& Value::operator[](std::string_view key) const {
  const auto& object = as_object();
  auto it = object.find(key);
  return it == object.end() ? kNull : it->second;
}

bool Value::contains(std::string_view key) const {
  const auto& object = as_object();
  return object.find(key) != object.end();
}

std::string Value::dump() const {
  std::string out;
  dump_value(out, *this);
  return out;
}

Result<Value> parse(std::string_view text, DuplicateNames duplicates) {
  return Parser(text, duplicates).document();
}

} // namespace vesicle::json
