#include "tests/hostd/http_client.hpp"

#include <poll.h>

#include <limits>

#include <boost/asio/connect.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http.hpp>

namespace vesicle::testing {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

HttpClient::HttpClient(std::string host, unsigned short port, std::string key)
    : socket_(io_), host_(std::move(host)), port_(port), key_(std::move(key)) {}

HttpClient::~HttpClient() {
  close();
}

void HttpClient::close() {
  boost::system::error_code ignored;
  socket_.close(ignored);
  connected_ = false;
  buffer_.clear();
}

void HttpClient::connect() {
  if (connected_) return;
  socket_ = asio::ip::tcp::socket(io_);
  socket_.connect({asio::ip::make_address(host_), port_});
  buffer_.clear();
  connected_ = true;
}

namespace {

http::request<http::string_body> make_request(const std::string& method, const std::string& target,
                                              const std::string& body, const std::string& key,
                                              const std::string& host,
                                              const std::map<std::string, std::string>& headers) {
  http::request<http::string_body> request{http::string_to_verb(method), target, 11};
  request.set(http::field::host, host);
  if (!key.empty()) request.set(http::field::authorization, "Bearer " + key);
  bool has_type = false;
  for (const auto& [name, value] : headers) {
    request.set(name, value);
    if (beast::iequals(name, "content-type")) has_type = true;
  }
  if (!body.empty() && !has_type) request.set(http::field::content_type, "application/json");
  request.body() = body;
  request.keep_alive(true);
  request.prepare_payload();
  return request;
}

template <class Header> void copy_headers(const Header& from, HttpResponse& to) {
  for (const auto& field : from) {
    std::string name(field.name_string());
    for (auto& c : name)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    to.headers[name] = std::string(field.value());
  }
}

} // namespace

HttpResponse HttpClient::request(const std::string& method, const std::string& target,
                                 const std::string& body,
                                 const std::map<std::string, std::string>& headers) {
  for (int attempt = 0;; ++attempt) {
    connect();
    auto request = make_request(method, target, body, key_, host_, headers);
    boost::system::error_code ec;
    http::write(socket_, request, ec);
    http::response_parser<http::string_body> parser;
    // Not boost::none: Beast 1.74 then refuses every Content-Length body.
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    if (!ec) http::read(socket_, buffer_, parser, ec);
    // A keep-alive connection the server closed meanwhile: retry once.
    if (ec && attempt == 0 &&
        (ec == http::error::end_of_stream || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == asio::error::eof)) {
      close();
      continue;
    }
    if (ec) {
      close();
      throw boost::system::system_error(ec, method + " " + target);
    }
    auto response = parser.release();
    HttpResponse out;
    out.status = response.result_int();
    out.body = std::move(response.body());
    out.keep_alive = response.keep_alive();
    copy_headers(response.base(), out);
    if (!out.keep_alive) close();
    return out;
  }
}

HttpResponse HttpClient::stream(const std::string& method, const std::string& target,
                                const std::string& body,
                                const std::function<void(std::string_view)>& on_data) {
  close();
  connect();
  auto request = make_request(method, target, body, key_, host_, {});
  http::write(socket_, request);
  http::response_parser<http::buffer_body> parser;
  // Not boost::none: Beast 1.74 then refuses every Content-Length body.
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  http::read_header(socket_, buffer_, parser);
  HttpResponse out;
  out.status = parser.get().result_int();
  copy_headers(parser.get().base(), out);
  char piece[16384];
  while (!parser.is_done()) {
    parser.get().body().data = piece;
    parser.get().body().size = sizeof piece;
    boost::system::error_code ec;
    // read_some: hand over what has arrived instead of waiting to fill
    // `piece`, so the caller sees when each part came.
    http::read_some(socket_, buffer_, parser, ec);
    if (ec == http::error::need_buffer) ec = {};
    if (ec) {
      close();
      throw boost::system::system_error(ec, "reading a streamed response");
    }
    auto size = sizeof piece - parser.get().body().size;
    if (size > 0) on_data(std::string_view(piece, size));
  }
  out.keep_alive = parser.get().keep_alive();
  close();
  return out;
}

std::string HttpClient::raw(const std::string& bytes, std::chrono::milliseconds timeout) {
  close();
  connect();
  asio::write(socket_, asio::buffer(bytes));
  std::string answer;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd fd{socket_.native_handle(), POLLIN, 0};
    if (::poll(&fd, 1, static_cast<int>(left.count())) <= 0) break;
    char piece[4096];
    boost::system::error_code ec;
    auto n = socket_.read_some(asio::buffer(piece), ec);
    if (ec) break;
    answer.append(piece, n);
  }
  close();
  return answer;
}

} // namespace vesicle::testing
