// The real vesicle-agent on the host (--channel-fd --no-init), spoken to
// over a socketpair, with the source tree's repl.py and the system python3.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "tests/guest/agent_harness.hpp"

namespace vesicle::test {
namespace {

// The agent's memory bounds are checked in the normal build. Under
// AddressSanitizer (build-asan) most of its RSS is the sanitizer's own:
// shadow memory and the quarantine that holds freed blocks back from reuse.
#ifdef __SANITIZE_ADDRESS__
constexpr bool kCheckAgentRss = false;
#else
constexpr bool kCheckAgentRss = true;
#endif

std::string read_host_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_host_file(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

std::string random_bytes(std::size_t size) {
  std::mt19937_64 random(12345);
  std::string data(size, '\0');
  for (std::size_t i = 0; i < size; i += 8) {
    const std::uint64_t word = random();
    std::memcpy(data.data() + i, &word, std::min<std::size_t>(8, size - i));
  }
  return data;
}

guest::Request ping_request(std::uint64_t id) {
  guest::Request request;
  request.set_id(id);
  request.mutable_ping();
  return request;
}

// ---------------------------------------------------------------- Python

TEST(AgentPython, StateSurvivesBetweenCells) {
  Agent agent;
  auto first = agent.python("x = 42");
  ASSERT_TRUE(first.exit) << first.err;
  EXPECT_EQ(first.exit->exit_code(), 0);
  EXPECT_FALSE(first.result);
  auto second = agent.python("print(x)");
  ASSERT_TRUE(second.exit);
  EXPECT_EQ(second.out, "42\n");
  EXPECT_EQ(second.exit->exit_code(), 0);
  EXPECT_FALSE(second.exit->repl_restarted());
}

TEST(AgentPython, TrailingExpressionComesBackAsRepr) {
  Agent agent;
  auto sum = agent.python("a = 20\na + 22");
  ASSERT_TRUE(sum.result);
  EXPECT_EQ(*sum.result, "42");
  auto underscore = agent.python("_ * 2");
  ASSERT_TRUE(underscore.result);
  EXPECT_EQ(*underscore.result, "84");
  auto text = agent.python("'h\\u00e9llo'");
  ASSERT_TRUE(text.result);
  EXPECT_EQ(*text.result, "'h\xc3\xa9llo'");
  auto none = agent.python("None");
  EXPECT_FALSE(none.result);
  auto statement = agent.python("y = 1");
  EXPECT_FALSE(statement.result);
  // A class defined in a cell lives in __main__, so pickle finds it.
  auto pickled =
      agent.python("import pickle\nclass P: pass\ntype(pickle.loads(pickle.dumps(P()))).__name__");
  ASSERT_TRUE(pickled.result) << (pickled.error ? pickled.error->traceback() : "");
  EXPECT_EQ(*pickled.result, "'P'");
}

TEST(AgentPython, ExceptionGivesTracebackAndTheReplLivesOn) {
  Agent agent;
  auto failed = agent.python("def f():\n    return 1 / 0\nf()");
  ASSERT_TRUE(failed.error);
  ASSERT_TRUE(failed.exit);
  EXPECT_EQ(failed.exit->exit_code(), 1);
  EXPECT_EQ(failed.error->name(), "ZeroDivisionError");
  EXPECT_EQ(failed.error->value(), "division by zero");
  EXPECT_NE(failed.error->traceback().find("return 1 / 0"), std::string::npos)
      << failed.error->traceback();
  EXPECT_EQ(failed.error->traceback().find("repl.py"), std::string::npos)
      << "driver frames leaked: " << failed.error->traceback();
  // The error event comes before the Exit.
  ASSERT_GE(failed.events.size(), 2u);
  EXPECT_TRUE(failed.events[failed.events.size() - 2].has_error());

  auto syntax = agent.python("x = (");
  ASSERT_TRUE(syntax.error);
  EXPECT_EQ(syntax.error->name(), "SyntaxError");

  auto exited = agent.python("import sys\nsys.exit(3)");
  ASSERT_TRUE(exited.error);
  EXPECT_EQ(exited.error->name(), "SystemExit");

  auto after = agent.python("print('still here')");
  EXPECT_EQ(after.out, "still here\n");
  EXPECT_FALSE(after.error);
  EXPECT_FALSE(after.exit->repl_restarted());
}

TEST(AgentPython, OutputStreamsBeforeTheCellEnds) {
  Agent agent;
  auto outcome = agent.python("import time\nprint('first')\ntime.sleep(1)\nprint('second')");
  ASSERT_TRUE(outcome.exit);
  EXPECT_EQ(outcome.out, "first\nsecond\n");
  // -u makes print() two writes ("first", then "\n"), so "first\n" may come
  // as several events; all of them must arrive well before the Exit.
  const auto exit_at = outcome.arrivals.back();
  std::string early;
  for (std::size_t i = 0; i + 1 < outcome.events.size(); ++i) {
    if (outcome.events[i].has_stdout() &&
        exit_at - outcome.arrivals[i] >= std::chrono::milliseconds(800)) {
      early += outcome.events[i].stdout();
    }
  }
  EXPECT_EQ(early, "first\n") << "the first line arrived only with the end of the cell";
}

// The agent holds output back briefly (Channel::kOutputLinger) so that a
// short cell's output and its Exit come in one write: the host wakes once
// per cell. The REPL's reply can come later than the hold on a loaded
// machine, so most cells, not every one, must come whole.
TEST(AgentPython, AShortCellsOutputAndExitComeInOneWrite) {
  Agent agent;
  int whole = 0;
  constexpr int kCells = 20;
  for (int i = 0; i < kCells; ++i) {
    // A little work after the output, as any cell has: without the hold
    // the output leaves before the cell ends.
    auto outcome =
        agent.python("print(" + std::to_string(i) + ")\nimport time\ntime.sleep(0.0003)");
    ASSERT_TRUE(outcome.exit);
    ASSERT_EQ(outcome.out, std::to_string(i) + "\n");
    ASSERT_GE(outcome.reads.size(), 2u);
    if (outcome.reads.front() == outcome.reads.back()) ++whole;
  }
  EXPECT_GE(whole, kCells / 2) << whole << " of " << kCells << " cells came in one read";
}

TEST(AgentPython, StderrAndBinaryOutputAreExact) {
  Agent agent;
  auto binary =
      agent.python("import os\nos.write(1, bytes(range(256)))\nos.write(2, b'\\xff\\x00e')");
  ASSERT_TRUE(binary.exit);
  std::string every_byte;
  for (int i = 0; i < 256; ++i)
    every_byte.push_back(static_cast<char>(i));
  EXPECT_EQ(binary.out, every_byte);
  EXPECT_EQ(binary.err, std::string("\xff\0e", 3));
  // The trailing expression here is os.write's return value.
  ASSERT_TRUE(binary.result);
  EXPECT_EQ(*binary.result, "3");
}

TEST(AgentPython, TimeoutInterruptsAndKeepsState) {
  Agent agent;
  ASSERT_TRUE(agent.python("kept = 'yes'").exit);
  const auto start = std::chrono::steady_clock::now();
  auto spin = agent.python("while True: pass", 2000);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(spin.exit);
  EXPECT_TRUE(spin.exit->timed_out());
  EXPECT_FALSE(spin.exit->repl_restarted());
  EXPECT_EQ(spin.exit->exit_code(), 1);
  ASSERT_TRUE(spin.error);
  EXPECT_EQ(spin.error->name(), "KeyboardInterrupt");
  EXPECT_GE(took, std::chrono::milliseconds(1900));
  EXPECT_LT(took, std::chrono::milliseconds(5000));

  auto after = agent.python("kept");
  ASSERT_TRUE(after.result);
  EXPECT_EQ(*after.result, "'yes'");
  EXPECT_FALSE(after.exit->timed_out());
}

TEST(AgentPython, CellIgnoringTheInterruptGetsAFreshRepl) {
  Agent agent({{"--repl-grace-ms=500"}});
  ASSERT_TRUE(agent.python("lost = 1").exit);
  auto stubborn = agent.python(
      "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass", 1000);
  ASSERT_TRUE(stubborn.exit);
  EXPECT_TRUE(stubborn.exit->timed_out());
  EXPECT_TRUE(stubborn.exit->repl_restarted());
  ASSERT_TRUE(stubborn.error);
  EXPECT_EQ(stubborn.error->name(), "ReplRestarted");

  auto fresh = agent.python("'lost' in globals()");
  ASSERT_TRUE(fresh.result);
  EXPECT_EQ(*fresh.result, "False");
  EXPECT_FALSE(fresh.exit->repl_restarted()) << "the loss was reported by the cell that caused it";
}

TEST(AgentPython, StoppedReplEndsInTimeoutNotAHang) {
  Agent agent({{"--repl-grace-ms=500"}});
  auto stopped = agent.python("import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", 1000, 0,
                              std::chrono::milliseconds(10000));
  ASSERT_TRUE(stopped.exit) << "the cell never ended";
  EXPECT_TRUE(stopped.exit->timed_out());
  EXPECT_TRUE(stopped.exit->repl_restarted());
  auto after = agent.python("1 + 1");
  ASSERT_TRUE(after.result);
  EXPECT_EQ(*after.result, "2");
}

TEST(AgentPython, KilledReplIsRestartedAndSaysSo) {
  Agent agent;
  ASSERT_TRUE(agent.python("lost = 1").exit);
  auto killed = agent.python("import os\nprint('bye', flush=True)\nos.kill(os.getpid(), 9)");
  ASSERT_TRUE(killed.exit);
  EXPECT_TRUE(killed.exit->repl_restarted());
  EXPECT_FALSE(killed.exit->timed_out());
  EXPECT_EQ(killed.exit->exit_code(), 1);
  EXPECT_EQ(killed.out, "bye\n");
  ASSERT_TRUE(killed.error);
  EXPECT_EQ(killed.error->name(), "ReplRestarted");
  EXPECT_NE(killed.error->value().find("signal 9"), std::string::npos) << killed.error->value();

  auto fresh = agent.python("'lost' in globals()");
  ASSERT_TRUE(fresh.result);
  EXPECT_EQ(*fresh.result, "False");

  auto exited = agent.python("import os\nos._exit(0)");
  EXPECT_TRUE(exited.exit->repl_restarted());
  EXPECT_EQ(agent.python("2 * 21").result.value_or(""), "42");
}

TEST(AgentPython, OutputFloodIsTruncatedAndMemoryStaysFlat) {
  Agent agent;
  auto flood = agent.python("import sys\nsys.stdout.write('x' * 50_000_000)\nNone");
  ASSERT_TRUE(flood.exit);
  EXPECT_TRUE(flood.exit->truncated());
  EXPECT_EQ(flood.out.size(), 8u << 20);
  EXPECT_EQ(flood.out.find_first_not_of('x'), std::string::npos);
  for (const auto& event : flood.events) {
    if (event.has_stdout()) {
      EXPECT_LE(event.stdout().size(), wire::kMaxChunkBytes);
    }
  }
  // The agent read 50 MB and forwarded 8 MiB without holding either.
  if (kCheckAgentRss) {
    EXPECT_LT(agent.peak_rss_kib(), 32u * 1024)
        << "agent peak RSS " << agent.peak_rss_kib() << " KiB";
  }

  auto capped = agent.python("print('y' * 5000)", 0, 1000);
  EXPECT_TRUE(capped.exit->truncated());
  EXPECT_EQ(capped.out, std::string(1000, 'y'));
  EXPECT_FALSE(agent.python("print('small')").exit->truncated());
}

TEST(AgentPython, CellsRunOneAtATimeInOrder) {
  Agent agent;
  guest::Request first;
  first.set_id(agent.next_id());
  first.mutable_exec_python()->set_code("import time\ntime.sleep(0.5)\norder = ['first']");
  guest::Request second;
  second.set_id(agent.next_id());
  second.mutable_exec_python()->set_code("order.append('second')\norder");
  agent.send(first);
  agent.send(second);
  auto a = agent.gather(first.id(), 10s);
  auto b = agent.gather(second.id(), 10s);
  ASSERT_TRUE(a.exit);
  ASSERT_TRUE(b.result) << (b.error ? b.error->traceback() : "");
  EXPECT_EQ(*b.result, "['first', 'second']");
}

TEST(AgentPython, ForkedChildDoesNotAnswerForTheRepl) {
  Agent agent;
  auto forked = agent.python("import os\npid = os.fork()\n'child' if pid == 0 else 'parent'");
  ASSERT_TRUE(forked.result);
  EXPECT_EQ(*forked.result, "'parent'");
  for (int i = 0; i < 5; ++i) {
    auto next = agent.python(std::to_string(i) + " * 2");
    ASSERT_TRUE(next.result) << i;
    EXPECT_EQ(*next.result, std::to_string(i * 2));
  }
}

TEST(AgentPython, BackgroundThreadOutputDoesNotDisturbLaterCells) {
  Agent agent;
  auto started = agent.python("import threading, time\n"
                              "def chatter():\n"
                              "    for _ in range(50):\n"
                              "        print('background')\n"
                              "        time.sleep(0.01)\n"
                              "threading.Thread(target=chatter, daemon=True).start()");
  ASSERT_TRUE(started.exit);
  std::this_thread::sleep_for(700ms);
  auto later = agent.python("print('foreground')");
  EXPECT_EQ(later.out, "foreground\n");
}

TEST(AgentPython, BrokenReplDriverIsReportedOnTheCell) {
  Agent agent({{"--repl=/nonexistent/repl.py"}});
  auto cell = agent.python("1 + 1", 0, 0, 20s);
  ASSERT_TRUE(cell.exit) << "the cell never ended";
  EXPECT_EQ(cell.exit->exit_code(), 1);
  EXPECT_TRUE(cell.exit->repl_restarted());
  ASSERT_TRUE(cell.error);
  EXPECT_EQ(cell.error->name(), "ReplRestarted");
  // Python's own complaint reaches the caller.
  EXPECT_NE(cell.err.find("/nonexistent/repl.py"), std::string::npos) << cell.err;
  // Bash is unaffected.
  EXPECT_EQ(agent.bash("echo fine").out, "fine\n");
}

TEST(AgentPython, CancelInterruptsARunningCell) {
  Agent agent;
  guest::Request cell;
  cell.set_id(agent.next_id());
  cell.mutable_exec_python()->set_code("import time\nwhile True: time.sleep(0.05)");
  agent.send(cell);
  std::this_thread::sleep_for(300ms);
  guest::Request cancel;
  cancel.set_id(agent.next_id());
  cancel.mutable_cancel()->set_target(cell.id());
  agent.send(cancel);
  auto done = agent.collect(cancel.id(), 5s);
  ASSERT_FALSE(done.empty());
  EXPECT_TRUE(done.back().has_done());
  auto outcome = agent.gather(cell.id(), 5s);
  ASSERT_TRUE(outcome.exit);
  EXPECT_TRUE(outcome.exit->timed_out());
  EXPECT_FALSE(outcome.exit->repl_restarted());
}

// ---------------------------------------------------------------- displays

namespace {

// The kinds of an exec's events in order, runs of stdout as one "out".
std::vector<std::string> event_kinds(const ExecOutcome& outcome) {
  std::vector<std::string> kinds;
  for (const auto& event : outcome.events) {
    std::string kind = event.has_stdout()    ? "out"
                       : event.has_stderr()  ? "err"
                       : event.has_display() ? (event.display().main_result() ? "main" : "display")
                       : event.has_result()  ? "result"
                       : event.has_error()   ? "error"
                       : event.has_exit()    ? "exit"
                                             : "other";
    if (kind == "out" && !kinds.empty() && kinds.back() == "out") continue;
    kinds.push_back(kind);
  }
  return kinds;
}

std::string data_of(const guest::Display& display, const std::string& mime) {
  auto found = display.data().find(mime);
  return found == display.data().end() ? "<none>" : found->second;
}

// Writes a display message straight into the REPL's reply pipe, past
// repl.py's own checks (the REPL object is the display builtin's closure).
constexpr const char* kRawDisplay = R"(
import os, struct
def raw_display(pairs):
    repl = display.__closure__[0].cell_contents
    fields = [(b"k", b"display"), (b"q", repl.sequence)] + pairs
    body = b"".join(tag + struct.pack("<I", len(value)) + value for tag, value in fields)
    os.write(repl.replies, struct.pack("<I", len(body)) + body)
)";

} // namespace

TEST(AgentPython, DisplayOutputsArriveInOrderWithTheOutput) {
  Agent agent;
  auto cell =
      agent.python("class Rich:\n"
                   "    def _repr_html_(self): return '<b>rich</b>'\n"
                   "    def _repr_json_(self): return {'n': [1, 2]}\n"
                   "    def __repr__(self): return 'Rich()'\n"
                   "print('before')\n"
                   "display(Rich())\n"
                   "print('between')\n"
                   "display({'image/png': b'\\x89PNG fake', 'text/plain': 'an image'}, raw=True)\n"
                   "print('after')\n"
                   "Rich()");
  ASSERT_TRUE(cell.exit) << cell.err;
  EXPECT_EQ(cell.err, "");
  EXPECT_EQ(event_kinds(cell), (std::vector<std::string>{"out", "display", "out", "display", "out",
                                                         "main", "result", "exit"}));
  EXPECT_EQ(cell.out, "before\nbetween\nafter\n");
  ASSERT_EQ(cell.displays.size(), 3u);
  EXPECT_EQ(data_of(cell.displays[0], "text/html"), "<b>rich</b>");
  EXPECT_EQ(data_of(cell.displays[0], "application/json"), "{\"n\": [1, 2]}");
  EXPECT_EQ(data_of(cell.displays[0], "text/plain"), "Rich()");
  EXPECT_FALSE(cell.displays[0].main_result());
  EXPECT_EQ(data_of(cell.displays[1], "image/png"), "\x89PNG fake");
  EXPECT_EQ(data_of(cell.displays[1], "text/plain"), "an image");
  // The trailing expression: a display marked main, and the result as ever.
  EXPECT_TRUE(cell.displays[2].main_result());
  EXPECT_EQ(data_of(cell.displays[2], "text/html"), "<b>rich</b>");
  ASSERT_TRUE(cell.result);
  EXPECT_EQ(*cell.result, "Rich()");
  EXPECT_EQ(data_of(cell.displays[2], "text/plain"), *cell.result);

  // A value with only a text repr is a result and no display.
  auto plain = agent.python("display(7)\n6 * 7");
  EXPECT_EQ(event_kinds(plain), (std::vector<std::string>{"display", "result", "exit"}));
  EXPECT_EQ(data_of(plain.displays.at(0), "text/plain"), "7");
  EXPECT_EQ(plain.result.value_or(""), "42");
  // matplotlib is not imported by the REPL itself.
  EXPECT_EQ(agent.python("import sys\n'matplotlib' in sys.modules").result.value_or(""), "False");
}

TEST(AgentPython, BrokenReprsAndMocksDoNotBreakTheCell) {
  Agent agent;
  auto cell = agent.python("class Half:\n"
                           "    def _repr_html_(self): raise ValueError('no html today')\n"
                           "    def _repr_markdown_(self): return '**md**'\n"
                           "    def _repr_svg_(self): return None\n"
                           "class Anything:\n"
                           "    def __getattr__(self, name): return lambda *a, **k: '<i>'\n"
                           "display(Half(), Anything())\n"
                           "Half");
  ASSERT_TRUE(cell.exit);
  EXPECT_FALSE(cell.error) << cell.error->traceback();
  EXPECT_NE(cell.err.find("_repr_html_ of Half raised ValueError: no html today"),
            std::string::npos)
      << cell.err;
  ASSERT_EQ(cell.displays.size(), 2u);
  EXPECT_EQ(data_of(cell.displays[0], "text/markdown"), "**md**");
  EXPECT_EQ(data_of(cell.displays[0], "text/html"), "<none>");
  EXPECT_EQ(data_of(cell.displays[0], "image/svg+xml"), "<none>");
  // An object that claims every attribute gets no rich representation.
  EXPECT_EQ(cell.displays[1].data().size(), 1u);
  // A class (whose _repr_html_ is a plain function) is only a result.
  EXPECT_EQ(cell.result.value_or(""), "<class '__main__.Half'>");

  auto bad = agent.python("display({'nope': 1}, raw=True)");
  ASSERT_TRUE(bad.error);
  EXPECT_EQ(bad.error->name(), "ValueError");
  EXPECT_NE(bad.error->value().find("'nope' is not a MIME type"), std::string::npos);
}

TEST(AgentPython, OversizedAndMalformedDisplaysAreDroppedWithANote) {
  Agent agent;
  // repl.py's own check.
  auto big = agent.python("display({'application/octet-stream': b'x' * 5_000_000}, raw=True)\n"
                          "print('still here')");
  ASSERT_TRUE(big.exit);
  EXPECT_TRUE(big.displays.empty());
  EXPECT_NE(big.err.find("a display output of 5000040 bytes (application/octet-stream) was "
                         "dropped: the limit is 4128768 bytes"),
            std::string::npos)
      << big.err;
  EXPECT_EQ(big.out, "still here\n");

  // The agent's check, for messages that did not come through repl.py's.
  ASSERT_TRUE(agent.python(kRawDisplay).exit);
  auto raw = agent.python(
      "raw_display([(b'm', b'application/octet-stream'), (b'd', b'y' * 4_200_000)])\n"
      "raw_display([(b'm', b'no type'), (b'd', b'z')])\n"
      "raw_display([(b'd', b'data first')])\n"
      "raw_display([(b'm', b'text/plain'), (b'd', b'a'), (b'm', b'text/plain'), (b'd', b'b')])\n"
      "raw_display([(b'm', b'text/plain'), (b'd', b'fine')])\n"
      "print('done')");
  ASSERT_TRUE(raw.exit);
  EXPECT_FALSE(raw.error);
  ASSERT_EQ(raw.displays.size(), 1u) << raw.err;
  EXPECT_EQ(data_of(raw.displays[0], "text/plain"), "fine");
  EXPECT_NE(raw.err.find("over the limit of 4128768 bytes"), std::string::npos) << raw.err;
  EXPECT_NE(raw.err.find("not type/subtype: \"no type\""), std::string::npos) << raw.err;
  EXPECT_NE(raw.err.find("data without a MIME type"), std::string::npos) << raw.err;
  EXPECT_NE(raw.err.find("it has text/plain twice"), std::string::npos) << raw.err;
  EXPECT_EQ(raw.out, "done\n");
  EXPECT_FALSE(raw.exit->repl_restarted());
  EXPECT_EQ(agent.python("6 * 7").result.value_or(""), "42");
}

TEST(AgentPython, DisplayFloodIsPacedAndMemoryStaysFlat) {
  Agent agent;
  // 64 MiB of images: the agent holds one at a time, the REPL waits.
  auto flood = agent.python("for i in range(64):\n"
                            "    display({'image/png': bytes([i]) * (1 << 20)}, raw=True)\n"
                            "print('end')");
  ASSERT_TRUE(flood.exit);
  EXPECT_FALSE(flood.error);
  ASSERT_EQ(flood.displays.size(), 64u);
  for (std::size_t i = 0; i < flood.displays.size(); ++i)
    EXPECT_EQ(data_of(flood.displays[i], "image/png"), std::string(1u << 20, static_cast<char>(i)));
  EXPECT_EQ(flood.out, "end\n");
#if !defined(__SANITIZE_ADDRESS__) // ASan's shadow memory and quarantine dominate
  EXPECT_LT(agent.peak_rss_kib(), 32u * 1024)
      << "agent peak RSS " << agent.peak_rss_kib() << " KiB";
#endif
}

TEST(AgentPython, TimeoutInterruptsACellThatDisplays) {
  Agent agent;
  auto spin = agent.python("while True:\n    display({'text/plain': 'tick'}, raw=True)", 1500);
  ASSERT_TRUE(spin.exit);
  EXPECT_TRUE(spin.exit->timed_out());
  EXPECT_FALSE(spin.exit->repl_restarted());
  ASSERT_TRUE(spin.error);
  EXPECT_EQ(spin.error->name(), "KeyboardInterrupt");
  EXPECT_FALSE(spin.displays.empty());
  EXPECT_EQ(agent.python("6 * 7").result.value_or(""), "42");
}

// ---------------------------------------------------------------- Bash

TEST(AgentBash, ExitCodesStderrEnvAndCwd) {
  Agent agent;
  auto ok = agent.bash("echo hello");
  ASSERT_TRUE(ok.exit);
  EXPECT_EQ(ok.out, "hello\n");
  EXPECT_EQ(ok.exit->exit_code(), 0);
  EXPECT_GT(ok.exit->duration_us(), 0u);

  auto code = agent.bash("echo oops >&2; exit 3");
  EXPECT_EQ(code.exit->exit_code(), 3);
  EXPECT_EQ(code.err, "oops\n");
  EXPECT_EQ(code.out, "");

  auto env = agent.bash("echo \"$GREETING|$HOME|$LANG\"", {{"GREETING", "hi there"}});
  EXPECT_EQ(env.out, "hi there|" + agent.home().str() + "|C.UTF-8\n");

  TempDir dir;
  const std::string cwd = dir.str() + "/made by agent";
  auto in_dir = agent.bash("pwd", {}, cwd);
  EXPECT_EQ(in_dir.out, cwd + "\n");
  auto home = agent.bash("pwd");
  EXPECT_EQ(home.out, agent.home().str() + "\n");

  auto signalled = agent.bash("kill -9 $$");
  EXPECT_EQ(signalled.exit->signal(), 9);
  EXPECT_EQ(signalled.exit->exit_code(), 137);

  auto bytes = agent.bash("printf 'a\\0b\\377c'");
  EXPECT_EQ(bytes.out, std::string("a\0b\xff"
                                   "c",
                                   5));

  auto stdin_closed = agent.bash("cat; echo done");
  EXPECT_EQ(stdin_closed.out, "done\n");

  auto bad_cwd = agent.bash("pwd", {}, "relative/dir");
  ASSERT_TRUE(bad_cwd.failure);
  EXPECT_EQ(bad_cwd.failure->code(), guest::Failure::BAD_REQUEST);
}

TEST(AgentBash, TimeoutKillsTheWholeGroup) {
  Agent agent;
  const auto start = std::chrono::steady_clock::now();
  auto slow = agent.bash("sleep 30 & echo $!; sleep 30; echo never", {}, "", 500);
  ASSERT_TRUE(slow.exit);
  EXPECT_TRUE(slow.exit->timed_out());
  EXPECT_EQ(slow.exit->signal(), 9);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  ASSERT_FALSE(slow.out.empty());
  EXPECT_EQ(slow.out.find("never"), std::string::npos);
  // The background sleep was in bash's process group and died with it.
  const pid_t background = std::stoi(slow.out);
  for (int i = 0; i < 100 && process_alive(background); ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_FALSE(process_alive(background));
}

TEST(AgentBash, DaemonHoldingThePipesDoesNotHangTheCall) {
  Agent agent;
  const auto start = std::chrono::steady_clock::now();
  // The background sleep inherits stdout and stderr and keeps them open.
  auto daemon = agent.bash("sleep 100 & echo started; nohup sleep 100 >/dev/null 2>&1 & echo $!");
  ASSERT_TRUE(daemon.exit);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  EXPECT_EQ(daemon.exit->exit_code(), 0);
  ASSERT_EQ(daemon.out.rfind("started\n", 0), 0u) << daemon.out;
  const pid_t daemon_pid = std::stoi(daemon.out.substr(8));
  EXPECT_TRUE(process_alive(daemon_pid));
  // The agent is still fully responsive.
  EXPECT_EQ(agent.bash("echo next").out, "next\n");

  // When the agent ends, so do the daemons its commands left behind.
  agent.close_channel();
  ASSERT_TRUE(agent.wait_exit(10s));
  EXPECT_FALSE(process_alive(daemon_pid));
}

TEST(AgentBash, OutputFloodIsTruncated) {
  Agent agent;
  auto flood = agent.bash("head -c 50000000 /dev/zero; echo tail >&2");
  ASSERT_TRUE(flood.exit);
  EXPECT_TRUE(flood.exit->truncated());
  EXPECT_EQ(flood.exit->exit_code(), 0);
  EXPECT_EQ(flood.out.size() + flood.err.size(), 8u << 20);
  if (kCheckAgentRss) {
    EXPECT_LT(agent.peak_rss_kib(), 32u * 1024);
  }
}

TEST(AgentBash, CancelKillsTheCommand) {
  Agent agent;
  guest::Request command;
  command.set_id(agent.next_id());
  command.mutable_exec_bash()->set_command("echo begun; sleep 60");
  agent.send(command);
  auto first = agent.next_event(command.id(), 5s);
  ASSERT_TRUE(first && first->has_stdout());
  guest::Request cancel;
  cancel.set_id(agent.next_id());
  cancel.mutable_cancel()->set_target(command.id());
  agent.send(cancel);
  auto outcome = agent.gather(command.id(), 5s);
  ASSERT_TRUE(outcome.exit);
  EXPECT_TRUE(outcome.exit->timed_out());
  EXPECT_EQ(outcome.exit->signal(), 9);
  auto done = agent.collect(cancel.id(), 5s);
  ASSERT_FALSE(done.empty());
  EXPECT_TRUE(done.back().has_done());
}

TEST(AgentFlowControl, SlowHostKeepsAgentMemoryBounded) {
  Agent agent;
  TempDir dir;
  const std::string big = dir.str() + "/big";
  write_host_file(big, std::string(30u << 20, 'f'));
  const std::uint64_t baseline = agent.peak_rss_kib();

  guest::Request command;
  command.set_id(agent.next_id());
  command.mutable_exec_bash()->set_command("head -c 40000000 /dev/zero");
  command.mutable_exec_bash()->set_max_output_bytes(64u << 20);
  guest::Request download;
  download.set_id(agent.next_id());
  download.mutable_read_file()->set_path(big);
  agent.send(command);
  agent.send(download);
  // The host reads nothing for a while: the agent must hold back, not buffer.
  std::this_thread::sleep_for(1500ms);
  const std::uint64_t stalled = agent.peak_rss_kib();
  if (kCheckAgentRss) {
    EXPECT_LT(stalled, baseline + 8 * 1024)
        << "baseline " << baseline << " KiB, stalled " << stalled;
  }

  auto outcome = agent.gather(command.id(), 60s);
  ASSERT_TRUE(outcome.exit);
  EXPECT_FALSE(outcome.exit->truncated());
  EXPECT_EQ(outcome.out.size(), 40000000u);
  std::uint64_t downloaded = 0;
  for (;;) {
    auto event = agent.next_event(download.id(), 60s);
    ASSERT_TRUE(event);
    if (event->has_file_data()) {
      downloaded += event->file_data().size();
      continue;
    }
    ASSERT_TRUE(event->has_done());
    break;
  }
  EXPECT_EQ(downloaded, 30u << 20);
  if (kCheckAgentRss) {
    EXPECT_LT(agent.peak_rss_kib(), baseline + 8 * 1024);
  }
}

// ---------------------------------------------------------------- Concurrency

TEST(AgentConcurrency, BashRunsWhileACellRuns) {
  Agent agent;
  guest::Request cell;
  cell.set_id(agent.next_id());
  cell.mutable_exec_python()->set_code("import time\ntime.sleep(2)\nprint('python')");
  guest::Request command;
  command.set_id(agent.next_id());
  command.mutable_exec_bash()->set_command("sleep 0.5; echo bash");
  const auto start = std::chrono::steady_clock::now();
  agent.send(cell);
  agent.send(command);
  agent.send(ping_request(agent.next_id()));
  auto bash = agent.gather(command.id(), 10s);
  const auto bash_done = std::chrono::steady_clock::now() - start;
  auto python = agent.gather(cell.id(), 10s);
  const auto python_done = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(bash.exit);
  ASSERT_TRUE(python.exit);
  EXPECT_EQ(bash.out, "bash\n");
  EXPECT_EQ(python.out, "python\n");
  EXPECT_LT(bash_done, 1500ms);
  EXPECT_GE(python_done, 1900ms);
  EXPECT_LT(python_done, 4000ms) << "the two ran one after the other";
}

TEST(AgentConcurrency, DuplicateIdIsBusy) {
  Agent agent;
  guest::Request command;
  command.set_id(agent.next_id());
  command.mutable_exec_bash()->set_command("sleep 0.5");
  agent.send(command);
  guest::Request again = ping_request(command.id());
  agent.send(again);
  auto first = agent.next_event(command.id(), 5s);
  ASSERT_TRUE(first && first->has_failure());
  EXPECT_EQ(first->failure().code(), guest::Failure::BUSY);
  auto rest = agent.gather(command.id(), 5s);
  ASSERT_TRUE(rest.exit);
  EXPECT_EQ(rest.exit->exit_code(), 0);
}

// ---------------------------------------------------------------- Protocol

TEST(AgentProtocol, PingAndInfo) {
  Agent agent;
  agent.send(ping_request(7));
  auto pong = agent.collect(7, 5s);
  ASSERT_EQ(pong.size(), 1u);
  EXPECT_TRUE(pong[0].has_pong());

  guest::Request info;
  info.set_id(8);
  info.mutable_info();
  agent.send(info);
  auto events = agent.collect(8, 5s);
  ASSERT_EQ(events.size(), 1u);
  ASSERT_TRUE(events[0].has_info());
  const auto& i = events[0].info();
  EXPECT_FALSE(i.kernel().empty());
  EXPECT_GT(i.uptime_ms(), 0u);
  EXPECT_GT(i.mem_total_bytes(), 0u);
  EXPECT_GT(i.mem_available_bytes(), 0u);
  EXPECT_GT(i.disk_total_bytes(), 0u);
  EXPECT_FALSE(i.hostname().empty());
  EXPECT_FALSE(i.agent_version().empty());
  EXPECT_GT(i.repl_pid(), 0u);
  EXPECT_TRUE(process_alive(static_cast<pid_t>(i.repl_pid())));
}

TEST(AgentProtocol, CorruptFrameGetsBadRequestAndServiceGoesOn) {
  Agent agent;
  std::string garbage = "\xff\xff\xff\xff\xff\x01\x02";
  std::string frame;
  const std::uint32_t length = static_cast<std::uint32_t>(garbage.size());
  for (int i = 0; i < 4; ++i)
    frame.push_back(static_cast<char>((length >> (8 * i)) & 0xff));
  frame += garbage;
  agent.send_raw(frame);
  auto failure = agent.collect(0, 5s);
  ASSERT_EQ(failure.size(), 1u);
  ASSERT_TRUE(failure[0].has_failure());
  EXPECT_EQ(failure[0].failure().code(), guest::Failure::BAD_REQUEST);

  // A request with no kind this agent knows.
  guest::Request empty;
  empty.set_id(55);
  agent.send(empty);
  auto unknown = agent.collect(55, 5s);
  ASSERT_EQ(unknown.size(), 1u);
  ASSERT_TRUE(unknown[0].has_failure());
  EXPECT_EQ(unknown[0].failure().code(), guest::Failure::BAD_REQUEST);

  agent.send(ping_request(56));
  auto pong = agent.collect(56, 5s);
  ASSERT_EQ(pong.size(), 1u);
  EXPECT_TRUE(pong[0].has_pong());
}

TEST(AgentProtocol, OversizedFrameEndsTheTestModeAgent) {
  Agent agent;
  const std::string header = "\xff\xff\xff\x7f"; // ~2 GiB
  agent.send_raw(header);
  auto status = agent.wait_exit(5s);
  ASSERT_TRUE(status);
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 2);
}

TEST(AgentProtocol, EndOfChannelEndsTheAgentAndItsChildren) {
  Agent agent;
  auto info_repl = agent.python("import os\nos.getpid()");
  ASSERT_TRUE(info_repl.result);
  const pid_t repl_pid = std::stoi(*info_repl.result);
  EXPECT_TRUE(process_alive(repl_pid));
  agent.close_channel();
  auto status = agent.wait_exit(10s);
  ASSERT_TRUE(status);
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  EXPECT_FALSE(process_alive(repl_pid));
}

TEST(AgentProtocol, ShutdownAnswersDoneThenExitsInTestMode) {
  Agent agent;
  guest::Request shutdown;
  shutdown.set_id(9);
  shutdown.mutable_shutdown();
  agent.send(shutdown);
  auto done = agent.collect(9, 5s);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_TRUE(done[0].has_done());
  auto status = agent.wait_exit(5s);
  ASSERT_TRUE(status);
  EXPECT_EQ(WEXITSTATUS(*status), 0);
}

// ---------------------------------------------------------------- Files

TEST(AgentFiles, RoundTripOfTenMebibytes) {
  Agent agent;
  TempDir dir;
  const std::string data = random_bytes(10u << 20);
  const std::string path = dir.str() + "/deep er/fold\xc3\xa9r \xe6\x96\x87/data file.bin";
  auto written = agent.write_file(path, data, 0600, true);
  ASSERT_TRUE(written.has_done()) << written.failure().message();
  EXPECT_EQ(written.done().size(), data.size());
  EXPECT_EQ(read_host_file(path), data);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  std::string back;
  auto read = agent.read_file(path, back);
  ASSERT_TRUE(read.has_done()) << read.failure().message();
  EXPECT_EQ(read.done().size(), data.size());
  EXPECT_EQ(read.done().mode(), 0600u);
  EXPECT_TRUE(read.done().eof());
  EXPECT_TRUE(back == data) << "the bytes read back differ";

  // The guest sees the same bytes.
  auto sums = agent.bash("sha256sum < '" + path + "' | cut -d' ' -f1");
  auto py = agent.python("import hashlib\nprint(hashlib.sha256(open(" + std::string("'") + path +
                         "', 'rb').read()).hexdigest())");
  EXPECT_EQ(sums.out, py.out);
  EXPECT_EQ(sums.out.size(), 65u);

  // Nothing but the file is left in its folder (no temporaries).
  std::size_t entries = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::filesystem::path(path).parent_path())) {
    (void)entry;
    ++entries;
  }
  EXPECT_EQ(entries, 1u);
}

TEST(AgentFiles, ReplaceKeepsNewModeAndRangesWork) {
  Agent agent;
  TempDir dir;
  const std::string path = dir.str() + "/script.sh";
  ASSERT_TRUE(agent.write_file(path, "old", 0644).has_done());
  auto replaced = agent.write_file(path, "#!/bin/sh\necho ran\n", 0755);
  ASSERT_TRUE(replaced.has_done());
  EXPECT_EQ(agent.bash("'" + path + "'").out, "ran\n");

  std::string part;
  auto read = agent.read_file(path, part, 2, 7);
  ASSERT_TRUE(read.has_done());
  EXPECT_EQ(part, "/bin/sh");
  EXPECT_FALSE(read.done().eof());
  EXPECT_EQ(read.done().mode(), 0755u);
  std::string tail;
  auto rest = agent.read_file(path, tail, 10);
  EXPECT_EQ(tail, "echo ran\n");
  EXPECT_TRUE(rest.done().eof());

  auto empty = agent.write_file(dir.str() + "/empty", "");
  ASSERT_TRUE(empty.has_done());
  EXPECT_EQ(empty.done().size(), 0u);
  std::string nothing;
  EXPECT_TRUE(agent.read_file(dir.str() + "/empty", nothing).done().eof());
  EXPECT_EQ(nothing, "");
}

TEST(AgentFiles, SpecialFilesAreRefusedQuickly) {
  Agent agent;
  TempDir dir;
  const std::string fifo = dir.str() + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  for (const std::string& path : {fifo, std::string("/dev/zero"), dir.str()}) {
    const auto start = std::chrono::steady_clock::now();
    std::string data;
    auto event = agent.read_file(path, data);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 1s) << path;
    ASSERT_TRUE(event.has_failure()) << path;
    EXPECT_EQ(event.failure().code(), guest::Failure::NOT_A_FILE) << path;
    EXPECT_EQ(data, "");
  }
  std::string data;
  auto missing = agent.read_file(dir.str() + "/missing", data);
  ASSERT_TRUE(missing.has_failure());
  EXPECT_EQ(missing.failure().code(), guest::Failure::NOT_FOUND);
  auto relative = agent.read_file("etc/passwd", data);
  ASSERT_TRUE(relative.has_failure());
  EXPECT_EQ(relative.failure().code(), guest::Failure::BAD_REQUEST);

  // Uploads onto special files are refused too, and leave them alone.
  for (const std::string& path : {fifo, dir.str()}) {
    auto event = agent.write_file(path, "data");
    ASSERT_TRUE(event.has_failure()) << path;
    EXPECT_EQ(event.failure().code(), guest::Failure::NOT_A_FILE) << path;
  }
  struct stat st {};
  ASSERT_EQ(::stat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));

  auto no_parent = agent.write_file(dir.str() + "/no/such/dir/file", "data");
  ASSERT_TRUE(no_parent.has_failure());
  EXPECT_EQ(no_parent.failure().code(), guest::Failure::NOT_FOUND);
}

TEST(AgentFiles, CancelledUploadLeavesTheOldFile) {
  Agent agent;
  TempDir dir;
  const std::string path = dir.str() + "/precious.txt";
  write_host_file(path, "old contents");
  const std::uint64_t id = agent.next_id();
  for (int i = 0; i < 2; ++i) {
    guest::Request chunk;
    chunk.set_id(id);
    if (i == 0) chunk.mutable_write_file()->set_path(path);
    chunk.mutable_write_file()->set_data(std::string(100000, 'n'));
    agent.send(chunk);
  }
  guest::Request cancel;
  cancel.set_id(agent.next_id());
  cancel.mutable_cancel()->set_target(id);
  agent.send(cancel);
  auto upload = agent.collect(id, 5s);
  ASSERT_EQ(upload.size(), 1u);
  ASSERT_TRUE(upload[0].has_failure());
  auto done = agent.collect(cancel.id(), 5s);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_TRUE(done[0].has_done());
  // A chunk the host had already sent when it cancelled gets no reply.
  guest::Request late;
  late.set_id(id);
  late.mutable_write_file()->set_data("late");
  late.mutable_write_file()->set_last(true);
  agent.send(late);
  const std::uint64_t ping = agent.next_id();
  agent.send(ping_request(ping));
  ASSERT_EQ(agent.collect(ping, 5s).size(), 1u);
  EXPECT_TRUE(agent.collect(id, 200ms).empty());
  EXPECT_EQ(read_host_file(path), "old contents");
  std::size_t entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    (void)entry;
    ++entries;
  }
  EXPECT_EQ(entries, 1u) << "the temporary file was left behind";
}

TEST(AgentFiles, UploadAbandonedByTheHostIsRemoved) {
  TempDir dir;
  const std::string path = dir.str() + "/never.txt";
  {
    Agent agent;
    guest::Request chunk;
    chunk.set_id(agent.next_id());
    chunk.mutable_write_file()->set_path(path);
    chunk.mutable_write_file()->set_data("partial");
    agent.send(chunk);
    const std::uint64_t ping = agent.next_id();
    agent.send(ping_request(ping));
    ASSERT_FALSE(agent.collect(ping, 5s).empty()); // so the upload is open now
    EXPECT_FALSE(std::filesystem::is_empty(dir.path()));
    agent.close_channel();
    ASSERT_TRUE(agent.wait_exit(10s));
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

} // namespace
} // namespace vesicle::test
