// RefreshIdentity against the real vesicle-agent in its host test mode
// (--channel-fd --no-init): the checks, the replies, the machine-id file
// (redirected with --machine-id-path), the REPL's reseed and the ordering
// of later requests. The kernel steps (entropy, clock, hostname) are not
// applied on the host; tests/guest/identity_vm_test.cpp covers them in a VM.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "tests/guest/agent_harness.hpp"

namespace vesicle::test {
namespace {

using Clock = std::chrono::steady_clock;

std::string read_host_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

guest::RefreshIdentity identity(char entropy_byte = 'e', std::string machine_id = {}) {
  guest::RefreshIdentity refresh;
  refresh.set_entropy(std::string(64, entropy_byte));
  refresh.set_unix_time_ns(now_ns());
  refresh.set_hostname("sandbox-7.vesicle");
  refresh.set_machine_id(machine_id.empty() ? "0123456789abcdef0123456789abcdef" : machine_id);
  return refresh;
}

// An agent whose refresh writes the machine-id into its own temporary home.
struct IdentityAgent {
  TempDir files;
  std::string machine_id_path = files.str() + "/machine-id";
  Agent agent{Agent::Config{{"--machine-id-path=" + machine_id_path}}};

  guest::Event refresh(const guest::RefreshIdentity& refresh) {
    const std::uint64_t id = send_refresh(refresh);
    auto events = agent.collect(id, 10s);
    if (events.size() != 1) {
      ADD_FAILURE() << "expected one terminal event, got " << events.size();
      return {};
    }
    return events[0];
  }
  std::uint64_t send_refresh(const guest::RefreshIdentity& refresh) {
    guest::Request request;
    request.set_id(agent.next_id());
    *request.mutable_refresh_identity() = refresh;
    agent.send(request);
    return request.id();
  }
};

std::string hostname_of_this_host() {
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  return name;
}

TEST(AgentIdentity, RefreshWritesTheMachineIdAndLeavesTheHostAlone) {
  IdentityAgent a;
  const std::string host_name = hostname_of_this_host();
  auto refresh = identity();
  // An hour ahead: applied in a VM, ignored by the test-mode agent.
  refresh.set_unix_time_ns(now_ns() + 3600LL * 1000000000LL);
  refresh.set_hostname("clone-of-nothing");
  const auto done = a.refresh(refresh);
  ASSERT_TRUE(done.has_done()) << done.failure().message();
  EXPECT_EQ(read_host_file(a.machine_id_path), "0123456789abcdef0123456789abcdef\n");
  struct stat st {};
  ASSERT_EQ(::stat(a.machine_id_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0444u);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  // No temporary file stays beside it.
  std::size_t entries = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(a.files.path()))
    ++entries;
  EXPECT_EQ(entries, 1u);

  // The host is untouched: the test-mode agent skips the kernel steps.
  EXPECT_EQ(hostname_of_this_host(), host_name);
  EXPECT_LT(std::llabs(now_ns() - refresh.unix_time_ns() + 3600LL * 1000000000LL),
            600LL * 1000000000LL);

  // A second refresh replaces the id, and the agent's own view (Info) is
  // still the host's name.
  const auto again = a.refresh(identity('f', "fedcba9876543210fedcba9876543210"));
  ASSERT_TRUE(again.has_done()) << again.failure().message();
  EXPECT_EQ(read_host_file(a.machine_id_path), "fedcba9876543210fedcba9876543210\n");
}

TEST(AgentIdentity, BadFieldsAreRefusedNamingTheFieldAndChangeNothing) {
  IdentityAgent a;
  ASSERT_TRUE(a.refresh(identity()).has_done());
  struct Case {
    const char* what;
    std::function<void(guest::RefreshIdentity&)> spoil;
    const char* names;
  };
  const std::vector<Case> cases = {
      {"no entropy", [](auto& r) { r.clear_entropy(); }, "entropy has 0 bytes"},
      {"31 bytes", [](auto& r) { r.set_entropy(std::string(31, 'x')); }, "entropy has 31 bytes"},
      {"513 bytes", [](auto& r) { r.set_entropy(std::string(513, 'x')); }, "entropy has 513"},
      {"no time", [](auto& r) { r.set_unix_time_ns(0); }, "unix_time_ns 0"},
      {"1999", [](auto& r) { r.set_unix_time_ns(915148800LL * 1000000000LL); }, "unix_time_ns"},
      {"negative time", [](auto& r) { r.set_unix_time_ns(-5); }, "unix_time_ns -5"},
      {"no hostname", [](auto& r) { r.clear_hostname(); }, "hostname is empty"},
      {"65 characters", [](auto& r) { r.set_hostname(std::string(65, 'a')); }, "65 characters"},
      {"64-char label", [](auto& r) { r.set_hostname(std::string(64, 'a')); },
       "label of 64 characters"},
      {"underscore", [](auto& r) { r.set_hostname("my_box"); }, "outside letters"},
      {"space", [](auto& r) { r.set_hostname("my box"); }, "outside letters"},
      {"slash", [](auto& r) { r.set_hostname("../etc"); }, "hostname"},
      {"leading hyphen", [](auto& r) { r.set_hostname("-box"); }, "starts or ends with '-'"},
      {"trailing hyphen", [](auto& r) { r.set_hostname("box-.a"); }, "starts or ends with '-'"},
      {"empty label", [](auto& r) { r.set_hostname("a..b"); }, "empty label"},
      {"trailing dot", [](auto& r) { r.set_hostname("box."); }, "empty label"},
      {"NUL", [](auto& r) { r.set_hostname(std::string("bo\0x", 4)); }, "\\x00"},
      {"no machine id", [](auto& r) { r.clear_machine_id(); }, "machine_id"},
      {"uppercase id", [](auto& r) { r.set_machine_id("0123456789ABCDEF0123456789ABCDEF"); },
       "lowercase hexadecimal"},
      {"33 digits", [](auto& r) { r.set_machine_id("0123456789abcdef0123456789abcdef0"); },
       "33 characters"},
      {"zeros", [](auto& r) { r.set_machine_id(std::string(32, '0')); }, "all zeros"},
      {"newline in id", [](auto& r) { r.set_machine_id("0123456789abcdef0123456789abcde\n"); },
       "lowercase hexadecimal"},
  };
  for (const auto& c : cases) {
    auto refresh = identity('x', "ffffffffffffffffffffffffffffffff");
    c.spoil(refresh);
    const auto reply = a.refresh(refresh);
    ASSERT_TRUE(reply.has_failure()) << c.what << " was accepted";
    EXPECT_EQ(reply.failure().code(), guest::Failure::BAD_REQUEST) << c.what;
    EXPECT_NE(reply.failure().message().find(c.names), std::string::npos)
        << c.what << ": " << reply.failure().message();
    EXPECT_NE(reply.failure().message().find("nothing changed"), std::string::npos) << c.what;
    EXPECT_EQ(read_host_file(a.machine_id_path), "0123456789abcdef0123456789abcdef\n") << c.what;
  }
  // Boundaries that are fine: 32 and 512 bytes, a 63-character label, a
  // 64-character name, digits first (RFC 1123 allows it), upper case.
  for (const std::string& name : std::vector<std::string>{
           std::string(63, 'a'), std::string(31, 'a') + "." + std::string(32, 'b'), "1-2-3",
           "Sandbox-9", "a"}) {
    auto refresh = identity();
    refresh.set_hostname(name);
    EXPECT_TRUE(a.refresh(refresh).has_done()) << name;
  }
  for (std::size_t size : {32u, 512u}) {
    auto refresh = identity();
    refresh.set_entropy(std::string(size, 'z'));
    EXPECT_TRUE(a.refresh(refresh).has_done()) << size << " bytes";
  }
}

TEST(AgentIdentity, UnwritableMachineIdPathIsAFailureNamingThePath) {
  TempDir files;
  const std::string path = files.str() + "/missing-folder/machine-id";
  Agent agent{Agent::Config{{"--machine-id-path=" + path}}};
  guest::Request request;
  request.set_id(agent.next_id());
  *request.mutable_refresh_identity() = identity();
  agent.send(request);
  auto events = agent.collect(request.id(), 10s);
  ASSERT_EQ(events.size(), 1u);
  ASSERT_TRUE(events[0].has_failure());
  EXPECT_EQ(events[0].failure().code(), guest::Failure::INTERNAL);
  EXPECT_EQ(events[0].failure().errno_value(), ENOENT);
  EXPECT_NE(events[0].failure().message().find(path + ".vesicle-new"), std::string::npos)
      << events[0].failure().message();
  EXPECT_NE(events[0].failure().message().find("machine-id"), std::string::npos);
  // The agent goes on.
  auto after = agent.python("1 + 1");
  ASSERT_TRUE(after.result);
  EXPECT_EQ(*after.result, "2");
}

// Clones of one snapshot share the REPL's memory: here the "snapshot" state
// is random.seed(42), and what a clone would draw next without a reseed is
// known (`expected`).
TEST(AgentIdentity, IdleReplReseedsRandom) {
  IdentityAgent a;
  auto setup = a.agent.python("import random\nrandom.seed(42)\n"
                              "expected = [random.random() for _ in range(6)]\n"
                              "random.seed(42)\n"
                              "[random.random() for _ in range(3)] == expected[:3]");
  ASSERT_TRUE(setup.result) << setup.err;
  ASSERT_EQ(*setup.result, "True");
  ASSERT_TRUE(a.refresh(identity()).has_done());
  auto after = a.agent.python("[random.random() for _ in range(3)] != expected[3:]");
  ASSERT_TRUE(after.result) << after.err;
  EXPECT_EQ(*after.result, "True") << "random was not reseeded";

  // Two refreshes from the same state, even with the same host bytes, give
  // different sequences: the kernel's output is mixed in.
  auto draws = a.agent.python("random.seed(42)\ndraws = []");
  ASSERT_TRUE(draws.exit);
  ASSERT_TRUE(a.refresh(identity('a')).has_done());
  ASSERT_TRUE(a.agent
                  .python("draws.append([random.random() for _ in range(3)])\n"
                          "random.seed(42)")
                  .exit);
  ASSERT_TRUE(a.refresh(identity('a')).has_done());
  auto compared = a.agent.python("draws.append([random.random() for _ in range(3)])\n"
                                 "(draws[0] != draws[1], expected[:3] not in draws)");
  ASSERT_TRUE(compared.result) << compared.err;
  EXPECT_EQ(*compared.result, "(True, True)");
}

TEST(AgentIdentity, NumpyGlobalStateIsReseededOnlyWhenImported) {
  IdentityAgent a;
  // The host has no numpy; a stand-in package in the REPL's working
  // directory records the seeds it is given (the VM test uses the real one).
  const auto package = a.agent.home().path() / "numpy";
  std::filesystem::create_directories(package / "random");
  std::ofstream(package / "__init__.py") << "";
  std::ofstream(package / "random" / "__init__.py") << "seeds = []\n"
                                                       "def seed(value):\n"
                                                       "    seeds.append(value)\n";
  ASSERT_TRUE(a.refresh(identity()).has_done());
  auto untouched = a.agent.python("import sys\n'numpy' in sys.modules");
  ASSERT_TRUE(untouched.result);
  EXPECT_EQ(*untouched.result, "False") << "the reseed must not import numpy";

  auto imported = a.agent.python("import numpy.random\nlen(numpy.random.seeds)");
  ASSERT_TRUE(imported.result) << imported.err;
  EXPECT_EQ(*imported.result, "0");
  ASSERT_TRUE(a.refresh(identity()).has_done());
  ASSERT_TRUE(a.refresh(identity()).has_done());
  auto seeded = a.agent.python(
      "s = numpy.random.seeds\n"
      "(len(s), all(len(x) == 16 and all(0 <= w < 2**32 for w in x) for x in s), s[0] != s[1])");
  ASSERT_TRUE(seeded.result) << seeded.err;
  EXPECT_EQ(*seeded.result, "(2, True, True)");
}

// A refresh that arrives while a cell runs is answered at once; the cell
// keeps its generator, and the next cell starts reseeded.
TEST(AgentIdentity, ReseedWaitsForTheRunningCellButTheReplyDoesNot) {
  IdentityAgent a;
  auto setup = a.agent.python("import random, time\nrandom.seed(42)\n"
                              "expected = (random.random(), random.random())");
  ASSERT_TRUE(setup.exit && setup.exit->exit_code() == 0) << setup.err;
  guest::Request cell;
  cell.set_id(a.agent.next_id());
  cell.mutable_exec_python()->set_code("random.seed(42)\ntime.sleep(1.5)\nfirst = random.random()");
  a.agent.send(cell);
  std::this_thread::sleep_for(300ms); // the cell is asleep now
  const auto sent = Clock::now();
  const auto reply = a.refresh(identity());
  const auto waited = Clock::now() - sent;
  ASSERT_TRUE(reply.has_done());
  EXPECT_LT(waited, 700ms) << "the refresh waited for the cell";
  auto ran = a.agent.gather(cell.id(), 10s);
  ASSERT_TRUE(ran.exit);
  EXPECT_EQ(ran.exit->exit_code(), 0) << ran.err;
  auto next = a.agent.python("(first == expected[0], random.random() != expected[1])");
  ASSERT_TRUE(next.result) << next.err;
  // First: the running cell's generator was not changed under it. Second:
  // the cell after the refresh was reseeded.
  EXPECT_EQ(*next.result, "(True, True)");
}

// hostd does not wait for the Done: what it sends next must see the new
// identity anyway.
TEST(AgentIdentity, RequestsSentRightAfterTheRefreshSeeIt) {
  IdentityAgent a;
  auto setup = a.agent.python("import random\nrandom.seed(42)\n"
                              "expected = (random.random(), random.random())");
  ASSERT_TRUE(setup.exit && setup.exit->exit_code() == 0) << setup.err;
  // All four sent back to back, no waiting in between.
  const std::uint64_t refresh_id =
      a.send_refresh(identity('q', "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb"));
  guest::Request command;
  command.set_id(a.agent.next_id());
  command.mutable_exec_bash()->set_command("cat " + a.machine_id_path);
  a.agent.send(command);
  // If the reseed ran after this cell instead of before it, the next cell
  // would not draw expected[1].
  guest::Request cell;
  cell.set_id(a.agent.next_id());
  cell.mutable_exec_python()->set_code("random.seed(42)\nrandom.random() == expected[0]");
  a.agent.send(cell);
  guest::Request draw;
  draw.set_id(a.agent.next_id());
  draw.mutable_exec_python()->set_code("random.random() == expected[1]");
  a.agent.send(draw);

  auto bash = a.agent.gather(command.id(), 10s);
  ASSERT_TRUE(bash.exit);
  EXPECT_EQ(bash.out, "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb\n");
  auto seeded = a.agent.gather(cell.id(), 10s);
  ASSERT_TRUE(seeded.result) << seeded.err;
  EXPECT_EQ(*seeded.result, "True");
  auto drawn = a.agent.gather(draw.id(), 10s);
  ASSERT_TRUE(drawn.result) << drawn.err;
  EXPECT_EQ(*drawn.result, "True") << "the reseed ran after a cell sent after the refresh";
  auto events = a.agent.collect(refresh_id, 5s);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_TRUE(events[0].has_done());
}

// The refresh is on the sandbox-create path: measure it in the test-mode
// agent (checks, machine-id rename, REPL reseed queued; the kernel steps are
// a handful of syscalls more in the VM) against a ping over the same
// channel.
TEST(AgentIdentity, RefreshIsQuick) {
  IdentityAgent a;
  ASSERT_TRUE(a.agent.python("import random").exit);
  constexpr int kRounds = 200;
  std::vector<double> refresh_us;
  std::vector<double> ping_us;
  for (int i = 0; i < kRounds; ++i) {
    auto start = Clock::now();
    ASSERT_TRUE(a.refresh(identity(static_cast<char>('a' + i % 26))).has_done());
    refresh_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    guest::Request ping;
    ping.set_id(a.agent.next_id());
    ping.mutable_ping();
    start = Clock::now();
    a.agent.send(ping);
    ASSERT_EQ(a.agent.collect(ping.id(), 5s).size(), 1u);
    ping_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
  }
  std::sort(refresh_us.begin(), refresh_us.end());
  std::sort(ping_us.begin(), ping_us.end());
  auto at = [](const std::vector<double>& v, double q) {
    return v[static_cast<std::size_t>(q * (v.size() - 1))];
  };
  std::printf("refresh round trip (test mode, %d rounds): p50 %.0f us, p99 %.0f us; "
              "ping p50 %.0f us, p99 %.0f us\n",
              kRounds, at(refresh_us, 0.5), at(refresh_us, 0.99), at(ping_us, 0.5),
              at(ping_us, 0.99));
  // Generous for two shared cores; typical figures are printed above.
  EXPECT_LT(at(refresh_us, 0.5), 5000.0);
  // The REPL is still in step after 200 reseeds.
  auto alive = a.agent.python("random.random() < 1");
  ASSERT_TRUE(alive.result);
  EXPECT_EQ(*alive.result, "True");
}

} // namespace
} // namespace vesicle::test
