// AgentClient against the real vesicle-agent, run on the host in its test
// mode (--channel-fd=3 --no-init) over a socketpair: no VM. A fake peer is
// used only where the real agent cannot misbehave on cue (a bad frame).
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstring>
#include <functional>
#include <future>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

#include "tests/vmm/test_support.hpp"
#include "vmm/process.hpp"

#include <boost/asio/write.hpp>

#include "messages/framing.hpp"

namespace vesicle::test {
namespace {

using namespace std::chrono_literals;
using vmm::AgentClient;
using Socket = asio::local::stream_protocol::socket;
using Clock = std::chrono::steady_clock;

std::string agent_binary() {
  return env_or("VESICLE_AGENT_BIN", env_or("VESICLE_AGENT_BIN_DEFAULT", ""));
}

class AgentClientTest : public ::testing::Test {
protected:
  void SetUp() override {
    become_subreaper();
    const std::string binary = agent_binary();
    if (binary.empty() || ::access(binary.c_str(), X_OK) != 0) {
      GTEST_SKIP() << "the guest agent is not built here (" << binary
                   << "); build guest/agent or set VESICLE_AGENT_BIN";
    }
    home_.emplace();
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    UniqueFd ours(fds[0]);
    UniqueFd theirs(fds[1]);
    vmm::detail::SpawnOptions options;
    options.argv = {binary,
                    "--channel-fd=3",
                    "--no-init",
                    "--repl=" + env_or("VESICLE_REPL_PY", env_or("VESICLE_REPL_PY_DEFAULT", "")),
                    "--home=" + home_->path().string(),
                    "--machine-id-path=" + host_path("machine-id")};
    options.output = home_->path() / "agent.log";
    options.pass_fds = {theirs.get()};
    auto spawned = io_.call([&] { return vmm::detail::Process::spawn(io_.executor(), options); });
    ASSERT_TRUE(spawned) << spawned.error().message();
    agent_process_ = std::move(spawned.value());
    theirs.reset();
    client_ = io_.call([&] {
      return vmm::make_agent_client(
          Socket(io_.io(), asio::local::stream_protocol(), ours.release()), deadlines());
    });
    auto ready = io_.run(client_->wait_ready(20s, 250ms));
    ASSERT_TRUE(ready) << ready.error().message();
  }

  void TearDown() override {
    io_.call_void([this] {
      client_.reset();
      agent_process_.reset(); // SIGKILLs and reaps if still running
    });
    // What a killed agent left behind (its bash commands, its REPL).
    kill_orphans();
  }

  std::string host_path(const std::string& name) const { return (home_->path() / name).string(); }
  virtual vmm::AgentDeadlines deadlines() const { return {}; }

  IoThread io_;
  std::optional<TempDir> home_;
  std::unique_ptr<vmm::detail::Process> agent_process_;
  std::unique_ptr<AgentClient> client_;
};

TEST_F(AgentClientTest, ConcurrentRequestsEachGetTheirOwnEvents) {
  // Eight bash commands at once, each printing its own marker many times,
  // plus a ping and a Python cell in between: no event may cross over.
  struct All {
    std::vector<ExecReply> bash;
    ExecReply python;
    Result<guest::Pong> pong = make_error("ping", "not run");
    Clock::duration ping_latency{};
  };
  auto all = io_.run([](AgentClient& agent) -> asio::awaitable<All> {
    All all;
    all.bash.resize(8);
    int outstanding = 8;
    auto executor = co_await asio::this_coro::executor;
    asio::steady_timer done(executor, Clock::time_point::max());
    for (int i = 0; i < 8; ++i) {
      asio::co_spawn(
          executor,
          [&, i]() -> asio::awaitable<void> {
            all.bash[i] =
                co_await bash(agent, "for n in $(seq 200); do echo marker-" + std::to_string(i) +
                                         "; done; sleep 1; exit " + std::to_string(i));
            if (--outstanding == 0) done.cancel();
          },
          asio::detached);
    }
    const auto sent = Clock::now();
    all.pong = co_await agent.ping(5s);
    all.ping_latency = Clock::now() - sent;
    all.python = co_await python(agent, "21 * 2");
    boost::system::error_code ec;
    if (outstanding > 0) co_await done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    co_return all;
  }(*client_));

  ASSERT_TRUE(all.pong) << all.pong.error().message();
  // The bash commands sleep 1 s; a ping multiplexed beside them is not held up.
  EXPECT_LT(all.ping_latency, 900ms);
  ASSERT_TRUE(all.python.exit) << all.python.exit.error().message();
  EXPECT_EQ(all.python.output.results, std::vector<std::string>{"42"});
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(all.bash[i].exit) << all.bash[i].exit.error().message();
    EXPECT_EQ(all.bash[i].exit->exit_code(), i);
    std::string expected;
    for (int n = 0; n < 200; ++n)
      expected += "marker-" + std::to_string(i) + "\n";
    EXPECT_EQ(all.bash[i].output.out, expected) << "command " << i;
  }
}

TEST_F(AgentClientTest, ChannelClosedMidExecFailsEveryPendingAndLaterCall) {
  struct Outcome {
    ExecReply bash;
    ExecReply python;
    Result<guest::Pong> later = make_error("ping", "not run");
    Clock::duration later_took{};
    bool connected_after = true;
  };
  auto outcome =
      io_.run([](AgentClient& agent, vmm::detail::Process& process) -> asio::awaitable<Outcome> {
        Outcome outcome;
        auto executor = co_await asio::this_coro::executor;
        int outstanding = 2;
        asio::steady_timer done(executor, Clock::time_point::max());
        asio::co_spawn(
            executor,
            [&]() -> asio::awaitable<void> {
              outcome.bash = co_await bash(agent, "echo started; sleep 60");
              if (--outstanding == 0) done.cancel();
            },
            asio::detached);
        asio::co_spawn(
            executor,
            [&]() -> asio::awaitable<void> {
              outcome.python = co_await python(
                  agent, "import time\nprint('sleeping', flush=True)\ntime.sleep(60)");
              if (--outstanding == 0) done.cancel();
            },
            asio::detached);
        // Let both start streaming, then kill the agent under them.
        asio::steady_timer pause(executor, 1500ms);
        co_await pause.async_wait(asio::use_awaitable);
        process.kill(SIGKILL);
        boost::system::error_code ec;
        co_await done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        outcome.connected_after = agent.connected();
        const auto started = Clock::now();
        outcome.later = co_await agent.ping(10s);
        outcome.later_took = Clock::now() - started;
        co_return outcome;
      }(*client_, *agent_process_));

  ASSERT_FALSE(outcome.bash.exit);
  EXPECT_TRUE(vmm::is_channel_closed(outcome.bash.exit.error()))
      << outcome.bash.exit.error().message();
  EXPECT_NE(outcome.bash.exit.error().message().find("agent channel closed"), std::string::npos);
  EXPECT_EQ(outcome.bash.output.out, "started\n");
  ASSERT_FALSE(outcome.python.exit);
  EXPECT_TRUE(vmm::is_channel_closed(outcome.python.exit.error()))
      << outcome.python.exit.error().message();
  EXPECT_FALSE(outcome.connected_after);
  ASSERT_FALSE(outcome.later);
  EXPECT_TRUE(vmm::is_channel_closed(outcome.later.error()));
  EXPECT_LT(outcome.later_took, 100ms) << "a call on a dead channel must fail at once";
}

TEST_F(AgentClientTest, DownloadWithSlowSinkStreamsTheWholeFileInOrder) {
  const std::string data = random_bytes((24u << 20) + 12345, 7);
  {
    std::ofstream out(host_path("big.bin"), std::ios::binary);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  const std::string expected = sha256_hex(data);
  reset_peak_rss();
  [[maybe_unused]] const auto rss_before = rss_kib();
  // The sink hashes and drops each chunk after a pause, so what this process
  // holds is what the client buffers: at most one 4 MiB range ahead.
  auto got = io_.run(download(*client_, host_path("big.bin"), 15ms, /*keep=*/false));
  [[maybe_unused]] const auto rss_after = peak_rss_kib(); // unused under ASan
  ASSERT_TRUE(got.done) << got.done.error().message();
  EXPECT_EQ(got.done->size(), data.size());
  EXPECT_TRUE(got.done->eof());
  EXPECT_EQ(got.bytes, data.size());
  EXPECT_EQ(got.sha256, expected);
  EXPECT_GE(got.chunks, data.size() / wire::kMaxChunkBytes);
  // The sink takes ~1.5 s for 24 MiB, the agent reads it in well under
  // that: without ranges most of the file would wait in the client.
#if !defined(__SANITIZE_ADDRESS__) // ASan's quarantine keeps freed chunks resident
  EXPECT_LT(rss_after - std::min(rss_after, rss_before), 8u << 10)
      << "KiB peak growth while downloading 24 MiB";
#endif
}

TEST_F(AgentClientTest, DownloadSinkErrorStopsTheDownload) {
  const std::string data = random_bytes(3u << 20, 9);
  {
    std::ofstream out(host_path("three.bin"), std::ios::binary);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  struct Outcome {
    Result<guest::Done> done = make_error("download", "not run");
    int chunks = 0;
    Result<guest::Pong> after = make_error("ping", "not run");
  };
  auto outcome = io_.run([](AgentClient& agent, std::string path) -> asio::awaitable<Outcome> {
    Outcome outcome;
    vmm::ChunkSink sink = [&outcome](std::string_view) -> asio::awaitable<Result<void>> {
      if (++outcome.chunks == 2)
        co_return make_error("write response", "the HTTP client went away");
      co_return Result<void>{};
    };
    outcome.done = co_await agent.download(path, std::move(sink));
    outcome.after = co_await agent.ping(5s);
    co_return outcome;
  }(*client_, host_path("three.bin")));
  ASSERT_FALSE(outcome.done);
  EXPECT_NE(outcome.done.error().message().find("the HTTP client went away"), std::string::npos);
  EXPECT_EQ(outcome.chunks, 2);
  EXPECT_TRUE(outcome.after) << "the channel stays usable after a consumer gives up";
}

TEST_F(AgentClientTest, UploadInOddSizedWritesArrivesIntact) {
  const std::string data = random_bytes((5u << 20) + 777, 11);
  auto done = io_.run(upload(*client_, host_path("sub dir/ünïcode file.bin"), data, 100'003));
  ASSERT_TRUE(done) << done.error().message();
  EXPECT_EQ(done->size(), data.size());
  std::ifstream in(host_path("sub dir/ünïcode file.bin"), std::ios::binary);
  std::string back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(sha256_hex(back), sha256_hex(data));
}

TEST_F(AgentClientTest, UploadRefusedByTheAgentIsAnError) {
  // Without make_parents, a missing parent folder is refused.
  auto refused =
      io_.run([](AgentClient& agent, std::string path) -> asio::awaitable<Result<guest::Done>> {
        auto started = co_await agent.begin_upload(path, 0644, false);
        if (!started) co_return std::move(started).error();
        if (auto written = co_await started.value()->write("data"); !written)
          co_return std::move(written).error();
        co_return co_await started.value()->finish();
      }(*client_, host_path("missing/dir/file")));
  ASSERT_FALSE(refused);
  EXPECT_FALSE(vmm::is_channel_closed(refused.error()));
  EXPECT_EQ(refused.error().errno_value, ENOENT) << refused.error().message();
  EXPECT_NE(refused.error().message().find("missing/dir/file"), std::string::npos)
      << refused.error().message();
}

TEST_F(AgentClientTest, AbortedUploadLeavesTheTargetAsItWas) {
  {
    std::ofstream out(host_path("keep.txt"));
    out << "original";
  }
  auto aborted = io_.run([](AgentClient& agent, std::string path) -> asio::awaitable<Result<void>> {
    auto started = co_await agent.begin_upload(path, 0644, false);
    if (!started) co_return std::move(started).error();
    if (auto written = co_await started.value()->write(std::string(1u << 20, 'x')); !written) {
      co_return std::move(written).error();
    }
    co_await started.value()->abort();
    co_return Result<void>{};
  }(*client_, host_path("keep.txt")));
  ASSERT_TRUE(aborted) << aborted.error().message();
  std::ifstream in(host_path("keep.txt"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "original");
  // No temporary file is left beside it.
  int entries = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(home_->path()))
    ++entries;
  EXPECT_EQ(entries, 2) << "keep.txt and agent.log only";
}

TEST_F(AgentClientTest, DownloadOfMissingFileOrFifoIsAnErrorNotAHang) {
  ASSERT_EQ(::mkfifo(host_path("fifo").c_str(), 0644), 0);
  const auto started = Clock::now();
  auto missing = io_.run(download(*client_, host_path("nope")));
  auto fifo = io_.run(download(*client_, host_path("fifo")));
  EXPECT_LT(Clock::now() - started, 5s);
  ASSERT_FALSE(missing.done);
  EXPECT_EQ(missing.done.error().errno_value, ENOENT) << missing.done.error().message();
  ASSERT_FALSE(fifo.done);
  EXPECT_FALSE(vmm::is_channel_closed(fifo.done.error())) << fifo.done.error().message();
}

TEST_F(AgentClientTest, ClientDestroyedWhileCallsArePendingCompletesThem) {
  auto bash_call = std::make_shared<ExecReply>();
  std::promise<void> finished;
  io_.call_void([&] {
    asio::co_spawn(
        io_.executor(),
        [&, bash_call]() -> asio::awaitable<void> {
          *bash_call = co_await bash(*client_, "sleep 60");
          finished.set_value();
        },
        asio::detached);
  });
  std::this_thread::sleep_for(300ms);
  io_.call_void([&] { client_.reset(); });
  ASSERT_EQ(finished.get_future().wait_for(5s), std::future_status::ready);
  ASSERT_FALSE(bash_call->exit);
  EXPECT_TRUE(vmm::is_channel_closed(bash_call->exit.error()));
}

TEST(IdentityRefreshGenerate, GivesFreshValidValues) {
  auto one = vmm::IdentityRefresh::generate("sandbox-1");
  auto two = vmm::IdentityRefresh::generate("sandbox-1");
  ASSERT_TRUE(one && two);
  EXPECT_EQ(one->entropy.size(), 64u);
  EXPECT_NE(one->entropy, two->entropy);
  EXPECT_EQ(one->machine_id.size(), 32u);
  EXPECT_EQ(one->machine_id.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(one->machine_id, two->machine_id);
  EXPECT_EQ(one->hostname, "sandbox-1");
  EXPECT_FALSE(one->time) << "unset: stamped as it is sent";
}

TEST_F(AgentClientTest, RefreshIdentityIsAppliedOrRefusedWithTheField) {
  auto identity = vmm::IdentityRefresh::generate("sandbox-1");
  ASSERT_TRUE(identity);
  auto applied = io_.run(client_->refresh_identity(*identity));
  ASSERT_TRUE(applied) << applied.error().message();
  std::ifstream in(host_path("machine-id"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, identity->machine_id + "\n");

  auto bad = *identity;
  bad.hostname = "under_score";
  auto refused = io_.run(client_->refresh_identity(bad));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().errno_value, EINVAL);
  EXPECT_FALSE(vmm::is_channel_closed(refused.error()));
  EXPECT_NE(refused.error().message().find("hostname \"under_score\""), std::string::npos)
      << refused.error().message();
  EXPECT_NE(refused.error().message().find("refresh guest identity"), std::string::npos)
      << refused.error().message();

  auto stale = *identity;
  stale.time = std::chrono::system_clock::time_point{};
  auto epoch = io_.run(client_->refresh_identity(stale));
  ASSERT_FALSE(epoch);
  EXPECT_NE(epoch.error().message().find("unix_time_ns 0"), std::string::npos)
      << epoch.error().message();
}

// hostd sends the refresh without waiting for the answer; the exec it sends
// next must see the new identity, and a refusal still reaches a log.
TEST_F(AgentClientTest, SentRefreshIsAheadOfTheNextRequestAndFailuresAreReported) {
  auto identity = vmm::IdentityRefresh::generate("sandbox-2");
  ASSERT_TRUE(identity);
  struct Seen {
    Result<void> sent;
    ExecReply cat;
    Result<void> bad_sent;
  };
  auto failures = std::make_shared<std::vector<Error>>();
  auto seen = io_.run([](AgentClient& agent, vmm::IdentityRefresh identity, std::string path,
                         std::shared_ptr<std::vector<Error>> failures) -> asio::awaitable<Seen> {
    Seen seen;
    vmm::RefreshFailureHandler record = [failures](const Error& error) {
      failures->push_back(error);
    };
    seen.sent = co_await agent.send_refresh_identity(identity, record);
    seen.cat = co_await bash(agent, "cat " + path);
    auto bad = identity;
    bad.entropy = "too short";
    seen.bad_sent = co_await agent.send_refresh_identity(bad, record);
    co_return seen;
  }(*client_, *identity, host_path("machine-id"), failures));
  ASSERT_TRUE(seen.sent) << seen.sent.error().message();
  ASSERT_TRUE(seen.cat.exit) << seen.cat.exit.error().message();
  EXPECT_EQ(seen.cat.output.out, identity->machine_id + "\n");
  ASSERT_TRUE(seen.bad_sent) << "a refusal comes later, not from the send";
  const auto deadline = Clock::now() + 10s;
  while (io_.call([&] { return failures->size(); }) == 0 && Clock::now() < deadline)
    std::this_thread::sleep_for(20ms);
  auto seen_failures = io_.call([&] { return *failures; });
  ASSERT_EQ(seen_failures.size(), 1u) << "only the bad refresh fails";
  EXPECT_EQ(seen_failures[0].errno_value, EINVAL);
  EXPECT_NE(seen_failures[0].message().find("entropy has 9 bytes"), std::string::npos)
      << seen_failures[0].message();
}

TEST_F(AgentClientTest, SentRefreshStaysQuietWhenTheHostClosesTheChannel) {
  auto identity = vmm::IdentityRefresh::generate("sandbox-3");
  ASSERT_TRUE(identity);
  identity->entropy = "short"; // would be refused, if anyone were listening
  auto failures = std::make_shared<int>(0);
  auto sent = io_.run([](std::unique_ptr<AgentClient>& client, vmm::IdentityRefresh identity,
                         std::shared_ptr<int> failures) -> asio::awaitable<Result<void>> {
    vmm::RefreshFailureHandler count = [failures](const Error&) { ++*failures; };
    auto sent = co_await client->send_refresh_identity(identity, count);
    // Gone before the answer can be read: a deliberate teardown, not a
    // failure worth a log line.
    client.reset();
    co_return sent;
  }(client_, *identity, failures));
  ASSERT_TRUE(sent) << sent.error().message();
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(io_.call([&] { return *failures; }), 0);
}

// An agent client on one end of a socketpair, the test the peer on the
// other, and one ping-like call started on the io thread.
struct BadPeer {
  IoThread io;
  UniqueFd peer;
  std::unique_ptr<AgentClient> client;
  std::promise<Result<guest::Pong>> reply;

  BadPeer() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
      throw std::runtime_error(std::string("socketpair: ") + std::strerror(errno));
    peer = UniqueFd(fds[1]);
    client = io.call([&] {
      return vmm::make_agent_client(Socket(io.io(), asio::local::stream_protocol(), fds[0]));
    });
  }
  ~BadPeer() {
    io.call_void([&] { client.reset(); });
  }
  // Starts `call` on the client; its answer lands in `reply`.
  void start(std::function<asio::awaitable<Result<guest::Pong>>(AgentClient&)> call) {
    io.call_void([&] {
      asio::co_spawn(
          io.executor(),
          [this, call]() -> asio::awaitable<void> { reply.set_value(co_await call(*client)); },
          asio::detached);
    });
  }
  // The call's answer, which must come within five seconds.
  Result<guest::Pong> answer() {
    auto future = reply.get_future();
    if (future.wait_for(5s) != std::future_status::ready)
      return make_error("agent call", "no answer within 5 s");
    return future.get();
  }
};

// A peer that sends garbage instead of frames: the channel closes and the
// pending call fails, rather than waiting forever or allocating 4 GiB.
TEST(AgentClientBadPeer, OversizedFrameClosesTheChannel) {
  BadPeer bad;
  bad.start([](AgentClient& client) { return client.ping(30s); });
  const char garbage[] = "\xff\xff\xff\x7fnot a frame";
  ASSERT_EQ(::write(bad.peer.get(), garbage, sizeof garbage - 1),
            static_cast<ssize_t>(sizeof garbage - 1));
  auto pong = bad.answer();
  ASSERT_FALSE(pong);
  EXPECT_TRUE(vmm::is_channel_closed(pong.error())) << pong.error().message();
  EXPECT_EQ(pong.error().kind, ErrorKind::guest_protocol_violation) << pong.error().message();
  EXPECT_NE(pong.error().message().find("bad frame"), std::string::npos) << pong.error().message();
}

TEST(AgentClientBadPeer, PeerClosingEndsWaitReady) {
  BadPeer bad;
  bad.start([](AgentClient& client) { return client.wait_ready(30s, 50ms); });
  std::this_thread::sleep_for(200ms);
  bad.peer.reset();
  auto pong = bad.answer();
  ASSERT_FALSE(pong);
  EXPECT_TRUE(vmm::is_channel_closed(pong.error())) << pong.error().message();
}

// ---- A hostile guest: a fake agent ----------------------------------------
// The test speaks the frame protocol itself on the peer end, to break it on
// cue (the real agent never does). Named a fake: it is one.

// Runs `work` on `io` and waits at most `limit` for it; a call that hangs
// (what the host-side deadlines are there to prevent) is an Error here, not
// a hung test.
template <class T>
Result<T> run_within(IoThread& io, asio::awaitable<Result<T>> work,
                     std::chrono::milliseconds limit) {
  auto reply = std::make_shared<std::promise<Result<T>>>();
  auto future = reply->get_future();
  io.call_void([&] {
    asio::co_spawn(
        io.executor(),
        [reply, work = std::move(work)]() mutable -> asio::awaitable<void> {
          reply->set_value(co_await std::move(work));
        },
        asio::detached);
  });
  if (future.wait_for(limit) != std::future_status::ready)
    return make_error("agent call", "still pending after " + std::to_string(limit.count()) +
                                        " ms: the host has no deadline for it");
  return future.get();
}

class FakeAgent {
public:
  explicit FakeAgent(vmm::AgentDeadlines deadlines = {}) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
      throw std::runtime_error(std::string("socketpair: ") + std::strerror(errno));
    peer_ = UniqueFd(fds[1]);
    client_ = io_.call([&] {
      return vmm::make_agent_client(Socket(io_.io(), asio::local::stream_protocol(), fds[0]),
                                    deadlines);
    });
  }
  ~FakeAgent() {
    // Unblocks whatever call a test left pending (on today's code: all).
    io_.call_void([&] { client_.reset(); });
  }

  IoThread& io() { return io_; }
  AgentClient& client() { return *client_; }

  // The next request the client sent, within `limit`; nullopt if none came.
  std::optional<guest::Request> read_request(std::chrono::milliseconds limit = 5s) {
    const auto deadline = Clock::now() + limit;
    for (;;) {
      auto payload = decoder_.next();
      if (!payload) return std::nullopt;
      if (payload.value()) {
        guest::Request request;
        if (!wire::parse_payload(*payload.value(), request)) return std::nullopt;
        return request;
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd ready{peer_.get(), POLLIN, 0};
      if (::poll(&ready, 1, static_cast<int>(left.count())) <= 0) return std::nullopt;
      char buffer[64 << 10];
      const ssize_t n = ::read(peer_.get(), buffer, sizeof buffer);
      if (n <= 0) return std::nullopt;
      decoder_.feed(std::string_view(buffer, static_cast<std::size_t>(n)));
    }
  }

  // Writes `event` as one frame; false once the client hung up.
  bool send(const guest::Event& event) {
    const std::string frame = wire::encode_frame(event);
    std::size_t done = 0;
    while (done < frame.size()) {
      const ssize_t n = ::send(peer_.get(), frame.data() + done, frame.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return false;
      done += static_cast<std::size_t>(n);
    }
    return true;
  }

  // Waits (up to two seconds) for the client to drop the channel.
  std::optional<Error> closed_reason() {
    for (int i = 0; i < 200; ++i) {
      auto reason = io_.call([&] { return client_->closed_reason(); });
      if (reason) return reason;
      std::this_thread::sleep_for(10ms);
    }
    return std::nullopt;
  }

private:
  IoThread io_;
  UniqueFd peer_;
  std::unique_ptr<AgentClient> client_;
  wire::FrameDecoder decoder_;
};

guest::Event pong_for(std::uint64_t id) {
  guest::Event event;
  event.set_id(id);
  event.mutable_pong();
  return event;
}

TEST(AgentClientFakeAgent, AReplyToARequestNeverMadeDisconnectsTheGuest) {
  FakeAgent fake;
  auto pending = std::async(std::launch::async,
                            [&] { return run_within(fake.io(), fake.client().ping(5s), 5s); });
  auto ping = fake.read_request();
  ASSERT_TRUE(ping && ping->has_ping());
  ASSERT_TRUE(fake.send(pong_for(ping->id())));
  auto pong = pending.get();
  ASSERT_TRUE(pong) << pong.error().message();

  // An answer to an id this client never used, after it has been answered.
  ASSERT_TRUE(fake.send(pong_for(ping->id() + (std::uint64_t{1} << 52))));
  auto reason = fake.closed_reason();
  ASSERT_TRUE(reason) << "the client kept talking to a guest that answered a request never made";
  EXPECT_EQ(reason->kind, ErrorKind::guest_protocol_violation) << reason->message();
  EXPECT_NE(reason->message().find("never sent"), std::string::npos) << reason->message();

  auto later = run_within(fake.io(), fake.client().ping(5s), 5s);
  ASSERT_FALSE(later);
  EXPECT_TRUE(vmm::is_channel_closed(later.error())) << later.error().message();
  EXPECT_EQ(later.error().kind, ErrorKind::guest_protocol_violation);
}

TEST(AgentClientFakeAgent, FileDataBeyondTheRangeAskedForDisconnectsTheGuest) {
  FakeAgent fake;
  std::size_t delivered = 0;
  vmm::ChunkSink sink = [&delivered](std::string_view chunk) -> asio::awaitable<Result<void>> {
    delivered += chunk.size();
    co_return Result<void>{};
  };
  auto pending = std::async(std::launch::async, [&] {
    return run_within(fake.io(), fake.client().download("/data/big", sink), 8s);
  });
  auto read = fake.read_request();
  ASSERT_TRUE(read && read->has_read_file());
  const std::uint64_t range = read->read_file().length();
  ASSERT_GT(range, 0u) << "a download must ask for a bounded range";
  // The whole range, then one chunk more: what a hostile guest would stream
  // until the host runs out of memory.
  const std::string chunk(wire::kMaxChunkBytes, 'x');
  guest::Event data;
  data.set_id(read->id());
  data.set_file_data(chunk);
  for (std::uint64_t sent = 0; sent <= range; sent += chunk.size())
    if (!fake.send(data)) break;
  auto done = pending.get();
  ASSERT_FALSE(done) << "the client took more data than it asked for";
  EXPECT_EQ(done.error().kind, ErrorKind::guest_protocol_violation) << done.error().message();
  EXPECT_NE(done.error().message().find("beyond the range"), std::string::npos)
      << done.error().message();
  EXPECT_LE(delivered, range);
}

TEST(AgentClientFakeAgent, ExecOutputPastItsBudgetDisconnectsTheGuest) {
  FakeAgent fake;
  ExecReply reply;
  vmm::ExecEventSink sink = reply.output.sink();
  guest::ExecBash exec;
  exec.set_command("yes");
  exec.set_max_output_bytes(1000);
  auto pending = std::async(std::launch::async, [&] {
    return run_within(fake.io(), fake.client().exec_bash(exec, sink), 8s);
  });
  auto request = fake.read_request();
  ASSERT_TRUE(request && request->has_exec_bash());
  EXPECT_EQ(request->exec_bash().max_output_bytes(), 1000u);
  // The agent cuts output at the cap; this one does not. A generous slack
  // is allowed, then 4 MiB more comes.
  guest::Event out;
  out.set_id(request->id());
  out.set_stdout(std::string(64u << 10, 'y'));
  for (int i = 0; i < 64; ++i)
    if (!fake.send(out)) break;
  auto exit = pending.get();
  ASSERT_FALSE(exit) << "the client took output far past the exec's budget";
  EXPECT_EQ(exit.error().kind, ErrorKind::guest_protocol_violation) << exit.error().message();
  EXPECT_NE(exit.error().message().find("past its budget"), std::string::npos)
      << exit.error().message();
  EXPECT_LE(reply.output.out_bytes, 1000u + (64u << 10));
}

TEST(AgentClientFakeAgent, AnExecWithoutACapAsksForTheDefaultOne) {
  FakeAgent fake;
  guest::ExecBash exec;
  exec.set_command("true");
  vmm::ExecEventSink sink;
  auto pending = std::async(std::launch::async, [&] {
    return run_within(fake.io(), fake.client().exec_bash(exec, sink), 5s);
  });
  auto request = fake.read_request();
  ASSERT_TRUE(request && request->has_exec_bash());
  EXPECT_EQ(request->exec_bash().max_output_bytes(), 8u << 20)
      << "the host must know the budget it enforces";
  guest::Event exit;
  exit.set_id(request->id());
  exit.mutable_exit();
  ASSERT_TRUE(fake.send(exit));
  auto ended = pending.get();
  EXPECT_TRUE(ended) << ended.error().message();
}

TEST(AgentClientFakeAgent, StreamedEventsForARequestThatStreamsNothingDisconnectTheGuest) {
  FakeAgent fake;
  auto pending = std::async(std::launch::async,
                            [&] { return run_within(fake.io(), fake.client().ping(5s), 5s); });
  auto ping = fake.read_request();
  ASSERT_TRUE(ping && ping->has_ping());
  guest::Event out;
  out.set_id(ping->id());
  out.set_stdout("a ping has no output");
  ASSERT_TRUE(fake.send(out));
  auto pong = pending.get();
  ASSERT_FALSE(pong);
  EXPECT_EQ(pong.error().kind, ErrorKind::guest_protocol_violation) << pong.error().message();
}

TEST(AgentClientFakeAgent, DataSentIntoAnUploadsInboxDisconnectsTheGuest) {
  FakeAgent fake;
  auto work = [](AgentClient& client) -> asio::awaitable<Result<guest::Done>> {
    auto started = co_await client.begin_upload("/data/x", 0644, true);
    if (!started) co_return std::move(started).error();
    // Until the last chunk the agent may only refuse (one Failure).
    asio::steady_timer pause(co_await asio::this_coro::executor, 300ms);
    co_await pause.async_wait(asio::use_awaitable);
    if (auto written = co_await started.value()->write("abc"); !written)
      co_return std::move(written).error();
    co_return co_await started.value()->finish();
  };
  auto pending = std::async(std::launch::async,
                            [&] { return run_within(fake.io(), work(fake.client()), 5s); });
  auto open = fake.read_request();
  ASSERT_TRUE(open && open->has_write_file());
  guest::Event data;
  data.set_id(open->id());
  data.set_file_data(std::string(64u << 10, 'u'));
  ASSERT_TRUE(fake.send(data));
  auto done = pending.get();
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().kind, ErrorKind::guest_protocol_violation) << done.error().message();
}

TEST(AgentClientFakeAgent, AnExecPastItsTimeoutIsCancelledAndTheErrorSaysItWasInterrupted) {
  vmm::AgentDeadlines deadlines;
  deadlines.exec_grace = 200ms;
  deadlines.cancel_answer = 3s;
  FakeAgent fake(deadlines);
  guest::ExecPython exec;
  exec.set_code("while True: pass");
  exec.set_timeout_ms(300);
  vmm::ExecEventSink sink;
  const auto started = Clock::now();
  auto pending = std::async(std::launch::async, [&] {
    return run_within(fake.io(), fake.client().exec_python(exec, sink), 8s);
  });
  auto request = fake.read_request();
  ASSERT_TRUE(request && request->has_exec_python());
  // This agent ignores the timeout; the host must cancel on its own.
  auto cancel = fake.read_request(5s);
  ASSERT_TRUE(cancel) << "the host never cancelled an exec that overran its timeout";
  ASSERT_TRUE(cancel->has_cancel());
  EXPECT_EQ(cancel->cancel().target(), request->id());
  EXPECT_GE(Clock::now() - started, 500ms) << "cancelled before timeout plus grace";
  guest::Event exit;
  exit.set_id(request->id());
  exit.mutable_exit()->set_timed_out(true);
  exit.mutable_exit()->set_repl_restarted(true);
  ASSERT_TRUE(fake.send(exit));
  guest::Event done;
  done.set_id(cancel->id());
  done.mutable_done();
  ASSERT_TRUE(fake.send(done));
  auto ended = pending.get();
  ASSERT_FALSE(ended);
  EXPECT_EQ(ended.error().kind, ErrorKind::timeout) << ended.error().message();
  EXPECT_NE(ended.error().message().find("REPL was restarted"), std::string::npos)
      << ended.error().message();
  EXPECT_NE(ended.error().message().find("keeps running"), std::string::npos);
  EXPECT_TRUE(fake.io().call([&] { return fake.client().connected(); }));
}

TEST(AgentClientFakeAgent, AQueuedCellsTimeoutStartsWhenTheCellBeforeItEnded) {
  vmm::AgentDeadlines deadlines;
  deadlines.exec_grace = 200ms;
  deadlines.cancel_answer = 3s;
  FakeAgent fake(deadlines);
  guest::ExecPython first, second;
  first.set_code("first");
  first.set_timeout_ms(300);
  second.set_code("second");
  second.set_timeout_ms(300);
  vmm::ExecEventSink sink;
  auto one = std::async(std::launch::async, [&] {
    return run_within(fake.io(), fake.client().exec_python(first, sink), 8s);
  });
  auto a = fake.read_request();
  ASSERT_TRUE(a && a->has_exec_python());
  auto two = std::async(std::launch::async, [&] {
    return run_within(fake.io(), fake.client().exec_python(second, sink), 8s);
  });
  auto b = fake.read_request();
  ASSERT_TRUE(b && b->has_exec_python());
  // The agent runs the cells one after the other: the first ends (in time)
  // after 400 ms, the second only then starts its 300 ms.
  std::this_thread::sleep_for(400ms);
  guest::Event exit;
  exit.set_id(a->id());
  exit.mutable_exit();
  ASSERT_TRUE(fake.send(exit));
  auto early = fake.read_request(350ms);
  EXPECT_FALSE(early) << "the host cancelled a queued cell counting its time in the queue";
  exit.set_id(b->id());
  ASSERT_TRUE(fake.send(exit));
  auto ended_one = one.get();
  EXPECT_TRUE(ended_one) << ended_one.error().message();
  auto ended_two = two.get();
  EXPECT_TRUE(ended_two) << ended_two.error().message();
}

TEST(AgentClientFakeAgent, AGuestThatStopsReadingIsDisconnectedNotWaitedForForever) {
  vmm::AgentDeadlines deadlines;
  deadlines.send = 500ms;
  FakeAgent fake(deadlines);
  // The peer never reads: the socket buffer fills and the write stalls.
  auto work = [](AgentClient& client) -> asio::awaitable<Result<guest::Done>> {
    auto started = co_await client.begin_upload("/data/x", 0644, true);
    if (!started) co_return std::move(started).error();
    const std::string data(32u << 20, 'z');
    if (auto written = co_await started.value()->write(data); !written)
      co_return std::move(written).error();
    co_return co_await started.value()->finish();
  };
  const auto started = Clock::now();
  auto done = run_within(fake.io(), work(fake.client()), 8s);
  ASSERT_FALSE(done);
  EXPECT_TRUE(vmm::is_channel_closed(done.error()) || done.error().kind == ErrorKind::timeout)
      << done.error().message();
  EXPECT_LT(Clock::now() - started, 5s) << done.error().message();
  auto reason = fake.closed_reason();
  ASSERT_TRUE(reason);
  EXPECT_NE(reason->message().find("read nothing"), std::string::npos) << reason->message();
}

// ---- A stopped agent: the real one, SIGSTOPped --------------------------------

class StoppedAgentTest : public AgentClientTest {
protected:
  vmm::AgentDeadlines deadlines() const override {
    vmm::AgentDeadlines short_ones;
    short_ones.exec_grace = 300ms;
    short_ones.cancel_answer = 500ms;
    short_ones.file_idle = 1s;
    short_ones.control = 1s;
    short_ones.liveness = 1s;
    return short_ones;
  }
  void stop_agent() {
    io_.call_void([&] { agent_process_->kill(SIGSTOP); });
  }
};

TEST_F(StoppedAgentTest, AnExecWithoutTimeoutEndsInATimeoutThatSaysTheSandboxIsEnded) {
  stop_agent();
  guest::ExecBash exec;
  exec.set_command("echo never");
  vmm::ExecEventSink sink;
  const auto started = Clock::now();
  auto exit = run_within(io_, client_->exec_bash(exec, sink), 10s);
  ASSERT_FALSE(exit);
  EXPECT_EQ(exit.error().kind, ErrorKind::timeout) << exit.error().message();
  EXPECT_NE(exit.error().message().find("sandbox is ended"), std::string::npos)
      << exit.error().message();
  EXPECT_LT(Clock::now() - started, 5s);
  EXPECT_FALSE(io_.call([&] { return client_->connected(); }));
}

TEST_F(StoppedAgentTest, AnExecPastItsTimeoutAndAnUnansweredCancelEndTheSandbox) {
  stop_agent();
  guest::ExecBash exec;
  exec.set_command("sleep 30");
  exec.set_timeout_ms(500);
  vmm::ExecEventSink sink;
  auto exit = run_within(io_, client_->exec_bash(exec, sink), 10s);
  ASSERT_FALSE(exit);
  EXPECT_EQ(exit.error().kind, ErrorKind::timeout) << exit.error().message();
  EXPECT_NE(exit.error().message().find("nor after a cancel"), std::string::npos)
      << exit.error().message();
}

TEST_F(StoppedAgentTest, InfoTimesOutAndTheChannelSaysTheAgentStoppedAnswering) {
  stop_agent();
  auto info = run_within(io_, client_->info(), 10s);
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().kind, ErrorKind::timeout) << info.error().message();
  auto reason = io_.call([&] { return client_->closed_reason(); });
  ASSERT_TRUE(reason);
  EXPECT_EQ(reason->kind, ErrorKind::timeout) << reason->message();
  EXPECT_NE(reason->message().find("stopped answering"), std::string::npos) << reason->message();
}

// AgentClient::hold: the host stopped the guest (a full host disk), so the
// agent's silence is not its fault.
TEST_F(StoppedAgentTest, AHeldAgentIsNotStuckItsCallsFailAtOnceAndItsExecRunsOnWhenReleased) {
  std::string out;
  Result<guest::Exit> exit = make_error("exec", "not run");
  std::thread exec_thread([&] {
    guest::ExecBash exec;
    exec.set_command("sleep 1; echo done");
    exec.set_timeout_ms(20'000);
    vmm::ExecEventSink sink = [&out](const guest::Event& event) {
      if (event.has_stdout()) out += event.stdout();
    };
    exit = run_within(io_, client_->exec_bash(exec, sink), 30s);
  });
  std::this_thread::sleep_for(200ms);
  stop_agent();
  io_.call_void([&] { client_->hold("the test holds it"); });
  // Past liveness (1 s) and control (1 s) several times over.
  std::this_thread::sleep_for(3500ms);
  EXPECT_TRUE(io_.call([&] { return client_->connected(); }));
  const auto started = Clock::now();
  auto info = run_within(io_, client_->info(), 5s);
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().kind, ErrorKind::unavailable) << info.error().message();
  EXPECT_NE(info.error().message().find("is paused: the test holds it"), std::string::npos)
      << info.error().message();
  EXPECT_LT(Clock::now() - started, 500ms) << "a call to a held agent fails at once";

  io_.call_void([&] {
    agent_process_->kill(SIGCONT);
    client_->hold(std::nullopt);
  });
  exec_thread.join();
  ASSERT_TRUE(exit) << exit.error().message();
  EXPECT_EQ(exit->exit_code(), 0);
  EXPECT_EQ(out, "done\n");
  auto after = run_within(io_, client_->info(), 5s);
  EXPECT_TRUE(after) << after.error().message();
}

TEST_F(StoppedAgentTest, AnExecThatOverrunsItsTimeoutWhileHeldFailsButTheChannelStaysOpen) {
  Result<guest::Exit> exit = make_error("exec", "not run");
  std::thread exec_thread([&] {
    guest::ExecBash exec;
    exec.set_command("sleep 30");
    exec.set_timeout_ms(500);
    vmm::ExecEventSink sink;
    exit = run_within(io_, client_->exec_bash(exec, sink), 10s);
  });
  std::this_thread::sleep_for(100ms);
  stop_agent();
  io_.call_void([&] { client_->hold("the test holds it"); });
  exec_thread.join();
  ASSERT_FALSE(exit);
  EXPECT_EQ(exit.error().kind, ErrorKind::timeout) << exit.error().message();
  EXPECT_NE(exit.error().message().find("within its timeout"), std::string::npos)
      << exit.error().message();
  EXPECT_NE(exit.error().message().find("is paused: the test holds it"), std::string::npos)
      << exit.error().message();
  EXPECT_TRUE(io_.call([&] { return client_->connected(); }));
  // A request sent while held is not sent at all.
  guest::ExecBash later;
  later.set_command("echo later");
  vmm::ExecEventSink sink;
  auto refused = run_within(io_, client_->exec_bash(later, sink), 5s);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind, ErrorKind::unavailable) << refused.error().message();
  // Released, it answers again (the cancel reached it as it ran on).
  io_.call_void([&] {
    agent_process_->kill(SIGCONT);
    client_->hold(std::nullopt);
  });
  auto info = run_within(io_, client_->info(), 5s);
  EXPECT_TRUE(info) << info.error().message();
}

TEST_F(StoppedAgentTest, ADownloadFromAStoppedAgentTimesOut) {
  write_file(host_path("f"), "content");
  stop_agent();
  vmm::ChunkSink sink = [](std::string_view) -> asio::awaitable<Result<void>> {
    co_return Result<void>{};
  };
  auto done = run_within(io_, client_->download(host_path("f"), sink), 10s);
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().kind, ErrorKind::timeout) << done.error().message();
}

// ---- PortOpen: a TCP connection relayed over the channel ----

// A TCP server on the host's loopback that echoes what it reads until the
// peer half-closes, then closes (the agent in test mode runs on the host,
// so its 127.0.0.1 is this one).
class EchoServer {
public:
  EchoServer() {
    listener_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (!listener_ || ::bind(listener_.get(), reinterpret_cast<sockaddr*>(&address), length) != 0 ||
        ::listen(listener_.get(), 4) != 0 ||
        ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0)
      throw std::runtime_error(std::string("echo server: ") + std::strerror(errno));
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] {
      UniqueFd peer(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!peer) return;
      char buffer[16 << 10];
      for (;;) {
        const ssize_t n = ::read(peer.get(), buffer, sizeof buffer);
        if (n <= 0) break;
        // Slow on purpose: the relay's windows must hold the rest back.
        std::this_thread::sleep_for(1ms);
        if (::send(peer.get(), buffer, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) break;
      }
    });
  }
  ~EchoServer() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    thread_.join();
  }
  std::uint16_t port() const { return port_; }

private:
  UniqueFd listener_;
  std::uint16_t port_ = 0;
  std::thread thread_;
};

TEST_F(AgentClientTest, APortRelaysBothWaysPastItsWindowsAndEndsWhenTheServerCloses) {
  EchoServer server;
  std::string sent(3u << 20, '\0');
  for (std::size_t i = 0; i < sent.size(); ++i)
    sent[i] = static_cast<char>((i * 7 + i / 4096) & 0xff);
  auto echoed = run_within(
      io_,
      [](AgentClient& agent, std::uint16_t port,
         const std::string& data) -> asio::awaitable<Result<std::string>> {
        auto opened = co_await agent.open_port(port);
        if (!opened) co_return std::move(opened).error();
        std::shared_ptr<vmm::PortStream> stream = std::move(*opened);
        // Written while read: 3 MiB would not fit the windows otherwise.
        auto executor = co_await asio::this_coro::executor;
        asio::co_spawn(
            executor,
            [stream, &data]() -> asio::awaitable<void> {
              if (co_await stream->write(data)) (void)co_await stream->close_write();
            },
            asio::detached);
        std::string back;
        for (;;) {
          auto chunk = co_await stream->read();
          if (!chunk) co_return std::move(chunk).error();
          if (chunk->empty()) break;
          back += *chunk;
        }
        co_return back;
      }(*client_, server.port(), sent),
      60s);
  ASSERT_TRUE(echoed) << echoed.error().message();
  EXPECT_EQ(echoed->size(), sent.size());
  EXPECT_TRUE(*echoed == sent) << "the echo came back different";
  // The channel is still good for other calls.
  ASSERT_TRUE(run_within(io_, client_->ping(5s), 5s));
}

TEST_F(AgentClientTest, APortNothingListensOnIsAnUnavailableErrorThatSaysSo) {
  // A port just bound and closed: nothing listens there now.
  std::uint16_t port = 0;
  {
    EchoServer server;
    port = server.port();
    UniqueFd poke(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    (void)::connect(poke.get(), reinterpret_cast<sockaddr*>(&address), sizeof address);
  }
  auto read = run_within(
      io_,
      [](AgentClient& agent, std::uint16_t port) -> asio::awaitable<Result<std::string>> {
        auto opened = co_await agent.open_port(port);
        if (!opened) co_return std::move(opened).error();
        co_return co_await (*opened)->read();
      }(*client_, port),
      10s);
  ASSERT_FALSE(read);
  EXPECT_EQ(read.error().kind, ErrorKind::unavailable) << read.error().message();
  EXPECT_NE(
      read.error().message().find("nothing accepts connections on port " + std::to_string(port)),
      std::string::npos)
      << read.error().message();
}

TEST(AgentClientFakeAgent, PortDataBeyondTheWindowDisconnectsTheGuest) {
  FakeAgent fake;
  auto pending = std::async(std::launch::async, [&] {
    return run_within(
        fake.io(),
        [](AgentClient& agent) -> asio::awaitable<Result<std::string>> {
          auto opened = co_await agent.open_port(8000);
          if (!opened) co_return std::move(opened).error();
          std::shared_ptr<vmm::PortStream> stream = std::move(*opened);
          // Reads nothing: the guest must stop at the window.
          auto executor = co_await asio::this_coro::executor;
          asio::steady_timer wait(executor, 3s);
          boost::system::error_code ignored;
          co_await wait.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
          co_return co_await stream->read();
        }(fake.client()),
        8s);
  });
  auto open = fake.read_request();
  ASSERT_TRUE(open && open->has_port_open());
  EXPECT_EQ(open->port_open().port(), 8000u);
  const std::uint64_t window = open->port_open().window();
  ASSERT_GT(window, 0u);
  const std::string chunk(64u << 10, 'x');
  guest::Event data;
  data.set_id(open->id());
  data.set_port_data(chunk);
  for (std::uint64_t sent = 0; sent <= window; sent += chunk.size())
    if (!fake.send(data)) break;
  auto reason = fake.closed_reason();
  ASSERT_TRUE(reason) << "the client took more port data than its window";
  EXPECT_EQ(reason->kind, ErrorKind::guest_protocol_violation) << reason->message();
  EXPECT_NE(reason->message().find("beyond the window"), std::string::npos) << reason->message();
  (void)pending.get();
}

} // namespace
} // namespace vesicle::test
