// Setting headers on an HTTP/1.x request head the proxy holds whole (an
// HttpGate head step): every field of a set header's name is dropped,
// whatever its case, and the new field goes before the blank line. The
// request line and every other field keep their bytes and order.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "common/result.hpp"
#include "net/secrets.hpp"

namespace vesicle::net {

// `head` ends with the blank line (CRLF CRLF, or LF LF from a lenient
// client). Obsolete folded continuation lines of a dropped field go with it.
Result<std::string> rewrite_request_head(std::string_view head,
                                         std::span<const HeaderField> headers);

} // namespace vesicle::net
