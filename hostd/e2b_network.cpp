// E2B's egress options on a create onto vesicle's egress modes.
//
// E2B: traffic is allowed unless denyOut names it, and allowOut wins over
// denyOut; `allow_internet_access: false` is denyOut ["0.0.0.0/0"]; names
// in allowOut match HTTP's Host and TLS's SNI only. So what vesicle can
// give exactly:
//   nothing denied                       the host's default egress (allowOut
//                                        changes nothing, as on E2B)
//   everything denied, no allowOut       egress off
//   everything denied, allowOut names    the allowlist (egress_allow), which
//                                        is also checked on Host and SNI
//   rules {host: [{transform: {headers}}]}   secrets: hostd's egress proxy
//                                        sets the headers on that host's
//                                        HTTPS requests (each host must be
//                                        in allowOut, as E2B asks too)
// What it cannot (a denyOut of some networks only, an IP or CIDR in
// allowOut, an egress proxy, masked hosts) is refused with a 400 naming
// the field, never run with weaker isolation than asked for.
#include <algorithm>

#include "hostd/e2b.hpp"

namespace vesicle::hostd::e2b {

namespace {

constexpr std::string_view kAllTraffic = "0.0.0.0/0";

Error refuse(const std::string& field, const std::string& why) {
  return Error::of(ErrorKind::invalid_argument, "network." + field + ": " + why);
}

Result<std::vector<std::string>> strings(const google::protobuf::Value& value,
                                         const std::string& field) {
  std::vector<std::string> out;
  if (!value.has_list_value()) return refuse(field, "a list of strings");
  for (const auto& item : value.list_value().values()) {
    if (!item.has_string_value()) return refuse(field, "a list of strings");
    out.push_back(item.string_value());
  }
  return out;
}

// An IPv4 address or CIDR ("8.8.8.8", "10.0.0.0/8"): vesicle's allowlist
// takes host names only.
bool is_address(std::string_view entry) {
  return !entry.empty() && std::all_of(entry.begin(), entry.end(), [](char c) {
    return (c >= '0' && c <= '9') || c == '.' || c == '/';
  });
}

// rules -> secrets: every rule's transform.headers of one host, in order
// (a later rule's header replaces an earlier one's).
Result<void> add_secrets(const google::protobuf::Value& rules, api::CreateSandboxRequest& spec) {
  if (!rules.has_struct_value()) return refuse("rules", "an object {host: [rule, ...]}");
  for (const auto& [host, list] : rules.struct_value().fields()) {
    const std::string where = "rules[\"" + host + "\"]";
    if (!list.has_list_value()) return refuse(where, "a list of rules");
    google::protobuf::Struct headers;
    for (const auto& rule : list.list_value().values()) {
      if (!rule.has_struct_value()) return refuse(where, "each rule an object");
      for (const auto& [key, transform] : rule.struct_value().fields()) {
        if (key != "transform")
          return refuse(where, "\"" + key + "\" is not supported (only transform.headers)");
        if (!transform.has_struct_value()) return refuse(where, "transform: an object");
        for (const auto& [what, values] : transform.struct_value().fields()) {
          if (what != "headers")
            return refuse(where, "transform." + what + " is not supported (only headers)");
          if (!values.has_struct_value()) return refuse(where, "transform.headers: an object");
          for (const auto& [name, value] : values.struct_value().fields()) {
            if (!value.has_string_value())
              return refuse(where, "transform.headers[\"" + name + "\"]: a string");
            (*headers.mutable_fields())[name] = value;
          }
        }
      }
    }
    if (!headers.fields().empty()) (*spec.mutable_secrets())[host] = std::move(headers);
  }
  return {};
}

} // namespace

Result<bool> apply_network(const NewSandbox& request, api::CreateSandboxRequest& spec) {
  bool public_traffic = false;
  bool deny_all = request.has_allow_internet_access() && !request.allow_internet_access();
  std::vector<std::string> allow_out;
  const google::protobuf::Value* rules = nullptr;
  if (request.has_network()) {
    for (const auto& [field, value] : request.network().fields()) {
      if (field == "allowPublicTraffic") {
        if (!value.has_bool_value()) return refuse(field, "true or false");
        public_traffic = value.bool_value();
      } else if (field == "allowOut") {
        auto list = strings(value, field);
        if (!list) return list.error();
        allow_out = std::move(*list);
      } else if (field == "denyOut") {
        auto list = strings(value, field);
        if (!list) return list.error();
        for (const auto& entry : *list) {
          if (entry != kAllTraffic)
            return refuse(field, "\"" + entry +
                                     "\": vesicle denies either everything (\"0.0.0.0/0\", "
                                     "with allowOut's names let through) or nothing per "
                                     "sandbox; the host's operator denies networks for all");
          deny_all = true;
        }
      } else if (field == "rules") {
        rules = &value;
      } else {
        return refuse(field, "not supported by vesicle's E2B compatibility; create the "
                             "sandbox without it");
      }
    }
  }
  for (const auto& entry : allow_out)
    if (is_address(entry))
      return refuse("allowOut",
                    "\"" + entry +
                        "\": vesicle's allowlist takes host names (\"api.example.com\", "
                        "\"*.example.com\"), not addresses");
  if (deny_all) {
    if (allow_out.empty()) {
      spec.set_egress(false);
    } else {
      for (const auto& name : allow_out)
        spec.add_egress_allow(name);
    }
  }
  if (rules) {
    if (auto added = add_secrets(*rules, spec); !added) return added.error();
  }
  return public_traffic;
}

} // namespace vesicle::hostd::e2b
