// The reaper's decisions (ReaperBook), with the clock passed in: idle
// deadlines, running operations, lifetimes, each deadline reported once.
#include <gtest/gtest.h>

#include "actors/sandbox/reaper.hpp"

using namespace vesicle;

namespace {

constexpr std::int64_t kStart = 1'700'000'000'000; // Unix ms

SandboxInfo sandbox(const std::string& id, std::uint32_t idle_s, std::uint32_t lifetime_s) {
  SandboxInfo info;
  info.id = id;
  info.state = SandboxState::ready;
  info.created_at_ms = kStart;
  info.spec.idle_timeout_s = idle_s;
  info.spec.max_lifetime_s = lifetime_s;
  return info;
}

std::int64_t seconds(double s) {
  return kStart + static_cast<std::int64_t>(s * 1000);
}

TEST(ReaperBook, IdleSandboxExpiresAtItsTimeoutOnce) {
  ReaperBook book;
  book.track(sandbox("a", 5, 60), kStart);
  EXPECT_EQ(book.next_deadline(), seconds(5));
  EXPECT_TRUE(book.due(seconds(4.999)).empty());
  auto due = book.due(seconds(5));
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].id, "a");
  EXPECT_EQ(due[0].kind, ExpiryKind::idle);
  EXPECT_EQ(due[0].reason, "idle for 5 s (idle_timeout_s)");
  // Reported once: the next deadline is the lifetime's.
  EXPECT_TRUE(book.due(seconds(6)).empty());
  EXPECT_EQ(book.next_deadline(), seconds(60));
}

TEST(ReaperBook, ActivityPushesTheIdleDeadline) {
  ReaperBook book;
  book.track(sandbox("a", 5, 0), kStart);
  book.op_begun("a", 1, seconds(3));
  book.op_ended("a", 1, seconds(4));
  EXPECT_TRUE(book.due(seconds(8.9)).empty());
  EXPECT_EQ(book.next_deadline(), seconds(9));
  EXPECT_EQ(book.due(seconds(9)).size(), 1u);
}

TEST(ReaperBook, ARunningOperationIsNeverIdle) {
  ReaperBook book;
  book.track(sandbox("a", 5, 0), kStart);
  book.op_begun("a", 7, seconds(1));
  // A cell running far longer than the idle timeout.
  EXPECT_TRUE(book.due(seconds(1000)).empty());
  EXPECT_FALSE(book.next_deadline().has_value());
  // Two at once: idle only once both ended, counted from the last end.
  book.op_begun("a", 8, seconds(1001));
  book.op_ended("a", 7, seconds(1002));
  EXPECT_TRUE(book.due(seconds(1010)).empty());
  book.op_ended("a", 8, seconds(1011));
  EXPECT_TRUE(book.due(seconds(1015)).empty());
  EXPECT_EQ(book.due(seconds(1016)).size(), 1u);
}

TEST(ReaperBook, LifetimeEndsASandboxInUse) {
  ReaperBook book;
  book.track(sandbox("a", 5, 30), kStart);
  book.op_begun("a", 1, seconds(1));
  auto due = book.due(seconds(30));
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].kind, ExpiryKind::lifetime);
  EXPECT_EQ(due[0].reason, "reached its max lifetime of 30 s (max_lifetime_s)");
  // Never again, not even as idle once the operation ends.
  book.op_ended("a", 1, seconds(31));
  EXPECT_TRUE(book.due(seconds(10'000)).empty());
}

TEST(ReaperBook, LifetimeCountsFromCreationNotFromTracking) {
  ReaperBook book;
  // Became ready 20 s after its create (a slow cold boot).
  book.track(sandbox("a", 0, 30), seconds(20));
  EXPECT_EQ(book.next_deadline(), seconds(30));
}

TEST(ReaperBook, IdleAgainAfterNewActivity) {
  // A persistent sandbox the registry keeps running: its idle deadline is
  // reported again only after it was used again.
  ReaperBook book;
  book.track(sandbox("a", 5, 0), kStart);
  EXPECT_EQ(book.due(seconds(5)).size(), 1u);
  EXPECT_TRUE(book.due(seconds(50)).empty());
  book.op_begun("a", 1, seconds(60));
  book.op_ended("a", 1, seconds(61));
  EXPECT_EQ(book.due(seconds(66)).size(), 1u);
}

TEST(ReaperBook, ZeroMeansNoDeadlineAndForgetStopsWatching) {
  ReaperBook book;
  book.track(sandbox("a", 0, 0), kStart);
  EXPECT_FALSE(book.next_deadline().has_value());
  EXPECT_TRUE(book.due(seconds(1e6)).empty());
  book.track(sandbox("b", 5, 10), kStart);
  EXPECT_EQ(book.next_deadline(), seconds(5));
  book.forget("b");
  EXPECT_FALSE(book.tracks("b"));
  EXPECT_TRUE(book.due(seconds(100)).empty());
  // Operations on unknown sandboxes are ignored.
  book.op_begun("zz", 1, kStart);
  book.op_ended("zz", 1, kStart);
  EXPECT_EQ(book.size(), 1u);
}

TEST(ReaperBook, TrackIsIdempotent) {
  ReaperBook book;
  book.track(sandbox("a", 5, 0), kStart);
  book.op_begun("a", 1, seconds(2));
  // A second ready report (state changes are forwarded as they come) keeps
  // the running operation.
  book.track(sandbox("a", 5, 0), seconds(3));
  EXPECT_TRUE(book.due(seconds(100)).empty());
}

TEST(ReaperBook, SeveralSandboxesEachOnTheirOwnClock) {
  ReaperBook book;
  book.track(sandbox("a", 5, 0), kStart);
  book.track(sandbox("b", 10, 0), kStart);
  book.track(sandbox("c", 0, 7), kStart);
  EXPECT_EQ(book.next_deadline(), seconds(5));
  auto due = book.due(seconds(8));
  ASSERT_EQ(due.size(), 2u);
  EXPECT_EQ(due[0].id, "a");
  EXPECT_EQ(due[1].id, "c");
  EXPECT_EQ(book.next_deadline(), seconds(10));
}

} // namespace

// Issue 14: a persistent sandbox resumed from a Space (or a fork child)
// goes on with the running time its state already used.
TEST(ReaperBook, LifetimeCountsTheRunningTimeBeforeThisRun) {
  ReaperBook book;
  auto info = sandbox("a", 0, 30);
  info.lived_before_ms = 25'000; // 25 s in earlier runs
  book.track(info, seconds(1));
  EXPECT_EQ(book.next_deadline(), seconds(5));
  EXPECT_TRUE(book.due(seconds(4.9)).empty());
  auto due = book.due(seconds(5));
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].kind, ExpiryKind::lifetime);
}

// Operations at the sandboxes' gates (op_gate.hpp) send the reaper no
// message: it reads them when it looks.
TEST(ReaperBook, AnOperationAtTheGateIsActivity) {
  std::int64_t now = kStart;
  OpGates gates;
  gates.set_clock([&] { return now; });
  auto gate = gates.add("a", "alice");
  gate->open();
  ReaperBook book;
  book.set_activity([&](const std::string& id) { return gates.activity(id); });
  book.track(sandbox("a", 5, 0), kStart);
  EXPECT_EQ(book.next_deadline(), seconds(5));

  // An exec from 3 s to 4 s: the deadline that was set is early; looking
  // then finds the exec and moves it to 4 + 5 s.
  now = seconds(3);
  ASSERT_TRUE(gate->try_enter());
  now = seconds(4);
  gate->leave();
  EXPECT_TRUE(book.due(seconds(5)).empty());
  EXPECT_EQ(book.next_deadline(), seconds(9));
  EXPECT_EQ(book.due(seconds(9)).size(), 1u);
  EXPECT_TRUE(book.due(seconds(20)).empty()) << "reported once";

  // A cell running far past the timeout: never idle while it runs; each
  // look puts the deadline a timeout after it.
  now = seconds(30);
  ASSERT_TRUE(gate->try_enter());
  EXPECT_TRUE(book.due(seconds(500)).empty());
  EXPECT_EQ(book.next_deadline(), seconds(505));
  now = seconds(502);
  gate->leave();
  EXPECT_TRUE(book.due(seconds(505)).empty()) << "idle counts from the cell's end";
  EXPECT_EQ(book.due(seconds(507)).size(), 1u) << "new activity: reported again";
}

TEST(ReaperBook, ASandboxWithoutAGateGoesByMessagesAlone) {
  OpGates gates;
  ReaperBook book;
  book.set_activity([&](const std::string& id) { return gates.activity(id); });
  book.track(sandbox("a", 5, 0), kStart);
  book.op_begun("a", 1, seconds(1)); // a fork, from the registry
  EXPECT_TRUE(book.due(seconds(100)).empty());
  book.op_ended("a", 1, seconds(101));
  EXPECT_EQ(book.due(seconds(106)).size(), 1u);
}
