// A small blocking HTTP/1.1 client for hostd's tests and benchmark (Beast
// over a loopback TCP socket). One Client is one keep-alive connection.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>

namespace vesicle::testing {

struct HttpResponse {
  unsigned status = 0;
  std::string body;
  std::map<std::string, std::string> headers; // lower-case names
  bool keep_alive = false;
  std::string header(const std::string& name) const {
    auto found = headers.find(name);
    return found == headers.end() ? "" : found->second;
  }
};

class HttpClient {
public:
  HttpClient(std::string host, unsigned short port, std::string key = {});
  ~HttpClient();

  void set_key(std::string key) { key_ = std::move(key); }

  // Sends a request and reads the whole response. Reconnects if the server
  // closed the previous connection. Throws on transport errors.
  HttpResponse request(const std::string& method, const std::string& target,
                       const std::string& body = {},
                       const std::map<std::string, std::string>& headers = {});

  // Like request(), but hands the body to `on_data` piece by piece as it
  // arrives (the response's status and headers are in the return value).
  HttpResponse stream(const std::string& method, const std::string& target, const std::string& body,
                      const std::function<void(std::string_view)>& on_data);

  // Sends raw bytes on a fresh connection and returns everything the server
  // answers until it closes (or `timeout` passes).
  std::string raw(const std::string& bytes, std::chrono::milliseconds timeout);

  void close();

private:
  void connect();
  boost::asio::io_context io_;
  boost::asio::ip::tcp::socket socket_;
  boost::beast::flat_buffer buffer_;
  std::string host_;
  unsigned short port_;
  std::string key_;
  bool connected_ = false;
};

} // namespace vesicle::testing
