// A small JSON value for QMP. Boost.JSON arrived in Boost 1.75 and Debian
// ships 1.74; linking protobuf's full runtime for its JSON parser beside the
// lite runtime the wire code uses is a known double-free at exit. QMP's JSON
// is small and well formed, so this covers RFC 8259 without extensions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/result.hpp"

namespace vesicle::json {

class Value;
using Array = std::vector<Value>;
using Object = std::map<std::string, Value, std::less<>>;

class Value {
public:
  Value() = default;
  Value(std::nullptr_t) {}
  Value(bool b) : v_(b) {}
  Value(int i) : v_(std::int64_t{i}) {}
  Value(std::int64_t i) : v_(i) {}
  Value(std::uint64_t i) : v_(static_cast<std::int64_t>(i)) {}
  Value(double d) : v_(d) {}
  Value(const char* s) : v_(std::string(s)) {}
  Value(std::string s) : v_(std::move(s)) {}
  Value(std::string_view s) : v_(std::string(s)) {}
  Value(Array a) : v_(std::move(a)) {}
  Value(Object o) : v_(std::move(o)) {}

  bool is_null() const { return std::holds_alternative<std::nullptr_t>(v_); }
  bool is_bool() const { return std::holds_alternative<bool>(v_); }
  bool is_number() const { return is_int() || std::holds_alternative<double>(v_); }
  bool is_int() const { return std::holds_alternative<std::int64_t>(v_); }
  bool is_string() const { return std::holds_alternative<std::string>(v_); }
  bool is_array() const { return std::holds_alternative<Array>(v_); }
  bool is_object() const { return std::holds_alternative<Object>(v_); }

  // Accessors with a fallback, so reading an optional field of a QMP reply
  // needs no type checks at every call site.
  bool as_bool(bool fallback = false) const;
  std::int64_t as_int(std::int64_t fallback = 0) const;
  double as_double(double fallback = 0) const;
  const std::string& as_string() const; // "" unless a string
  const Array& as_array() const;        // empty unless an array
  const Object& as_object() const;      // empty unless an object

  // The member `key` of an object; a null Value when absent or not an object.
  const Value& operator[](std::string_view key) const;
  bool contains(std::string_view key) const;

  std::string dump() const;

private:
  std::variant<std::nullptr_t, bool, std::int64_t, double, std::string, Array, Object> v_;
};

// What a name given twice in one object does: the last one counts (as
// QMP's readers expect), or the text is refused (for a caller that must
// agree with another parser, which may pick the other one or refuse).
enum class DuplicateNames { last_wins, refuse };

// Parses one JSON text (surrounding whitespace allowed). Nesting deeper than
// 64 levels is refused.
Result<Value> parse(std::string_view text, DuplicateNames duplicates = DuplicateNames::last_wins);

} // namespace vesicle::json
